//! Tenants, keys and the audit log on every `Store` (SQLite and PostgreSQL, like behaviour.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use chrono::{TimeZone, Utc};
use flotilla_core::Timestamp;
use flotilla_core::audit::{MacKey, NewAuditEntry, PRUNE, Start, verify};
use flotilla_core::auth::{ApiKeyRecord, Role};
use flotilla_core::id::TenantId;
use flotilla_core::tenant::Tenant;
use flotilla_store::{AuditFilter, DynStore, StoreError};
use support::{Backend, next_id, truncate};

behaviours!(
    tenants_have_unique_names_and_can_be_changed,
    keys_are_listed_and_revoked_within_their_tenant,
    audit_entries_form_one_chain_across_concurrent_appends,
    audit_lists_filter_and_follow_the_cursor,
    a_prune_keeps_the_rest_verifiable,
);

fn mac_key() -> MacKey {
    MacKey::new("k1", [3; 32])
}

fn keys(id: &str) -> Option<MacKey> {
    (id == "k1").then(mac_key)
}

/// Pruning deletes the old entries and records which, in one transaction; what is left verifies
/// from its first entry, and the head and the last entry before a time are read back.
async fn a_prune_keeps_the_rest_verifiable(store: DynStore) {
    let mut batch: Vec<NewAuditEntry> = (0..6).map(|_| entry("key.create", None)).collect();
    for (i, e) in batch.iter_mut().enumerate() {
        e.at = t0() + chrono::Duration::seconds(i as i64);
    }
    store.append_audit(&batch, &mac_key()).await.unwrap();
    let head = store.audit_head().await.unwrap().unwrap();
    assert_eq!(head.seq, 6);
    let before = store
        .last_audit_before(t0() + chrono::Duration::seconds(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.seq, 3);
    let mut record = entry(PRUNE, None);
    record.target = format!("{}:{}", before.seq, before.hash);
    assert_eq!(store.prune_audit(3, &record, &mac_key()).await.unwrap(), 3);
    let left = store
        .list_audit(&AuditFilter {
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    assert_eq!(verify(&left, &Start::Beginning, &keys), Ok(4));
}

fn t0() -> Timestamp {
    Utc.timestamp_opt(1_700_000_000, 123_456_789)
        .single()
        .unwrap()
}

fn tenant(name: &str) -> Tenant {
    Tenant {
        id: TenantId(next_id()),
        name: name.to_owned(),
        created_at: t0(),
        rate_limit: None,
    }
}

fn key(id: &str, tenant: TenantId) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.to_owned(),
        tenant_id: tenant,
        role: Role::Submitter,
        name: id.to_owned(),
        secret_hash: "00".repeat(32),
        created_at: t0(),
        expires_at: None,
        revoked_at: None,
        rate_limit: None,
    }
}

fn entry(action: &str, tenant: Option<TenantId>) -> NewAuditEntry {
    NewAuditEntry {
        at: t0(),
        actor: Some("k1".into()),
        tenant_id: tenant,
        action: action.to_owned(),
        target: "t".into(),
        outcome: "success".into(),
        source: Some("127.0.0.1".into()),
    }
}

async fn tenants_have_unique_names_and_can_be_changed(store: DynStore) {
    let acme = tenant("acme");
    assert!(store.create_tenant(&acme).await.unwrap());
    assert!(
        !store.create_tenant(&tenant("acme")).await.unwrap(),
        "names are unique"
    );
    let globex = tenant("globex");
    assert!(store.create_tenant(&globex).await.unwrap());
    let listed: Vec<String> = store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(listed, ["acme", "globex"]);

    let got = store.get_tenant(acme.id).await.unwrap().unwrap();
    assert_eq!(got.created_at, truncate(t0()));
    let rate = "5/s".parse().unwrap();
    let updated = store
        .update_tenant(acme.id, None, Some(Some(rate)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (updated.name.as_str(), updated.rate_limit),
        ("acme", Some(rate))
    );
    let renamed = store
        .update_tenant(acme.id, Some("acme corp"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (renamed.name.as_str(), renamed.rate_limit),
        ("acme corp", Some(rate)),
        "a missing field is left as it was"
    );
    let cleared = store
        .update_tenant(acme.id, None, Some(None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cleared.rate_limit, None);
    assert!(matches!(
        store.update_tenant(acme.id, Some("globex"), None).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .update_tenant(TenantId(next_id()), Some("x"), None)
            .await
            .unwrap(),
        None
    );
}

async fn keys_are_listed_and_revoked_within_their_tenant(store: DynStore) {
    let a = TenantId(next_id());
    let b = TenantId(next_id());
    for record in [key("a1", a), key("a2", a), key("b1", b)] {
        store.insert_api_key(&record).await.unwrap();
    }
    let ids = |keys: Vec<ApiKeyRecord>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_api_keys(Some(a)).await.unwrap()),
        ["a1", "a2"]
    );
    assert_eq!(ids(store.list_api_keys(None).await.unwrap()).len(), 3);

    assert_eq!(
        store.revoke_api_key(Some(b), "a1", t0()).await.unwrap(),
        None,
        "another tenant's key is not found"
    );
    assert!(
        store
            .get_api_key("a1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    let revoked = store
        .revoke_api_key(Some(a), "a1", t0())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(truncate(t0())));
    let later = t0() + chrono::Duration::seconds(60);
    let again = store
        .revoke_api_key(None, "a1", later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.revoked_at,
        Some(truncate(t0())),
        "the first revocation time stays"
    );
    assert_eq!(
        store.revoke_api_key(None, "nope", t0()).await.unwrap(),
        None
    );
}

async fn audit_entries_form_one_chain_across_concurrent_appends(store: DynStore) {
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..5 {
                let batch = vec![entry(&format!("w{w}.{i}"), None); 1 + i % 3];
                store.append_audit(&batch, &mac_key()).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let all = store
        .list_audit(&AuditFilter {
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 8 * (1 + 2 + 3 + 1 + 2));
    assert_eq!(verify(&all, &Start::Beginning, &keys), Ok(all.len()));
    assert!(all.iter().all(|e| e.mac_key.as_deref() == Some("k1")));
    assert_eq!(all.first().map(|e| e.seq), Some(1));
}

async fn audit_lists_filter_and_follow_the_cursor(store: DynStore) {
    let a = TenantId(next_id());
    let appended = store
        .append_audit(
            &[
                entry("key.create", Some(a)),
                entry("auth.failure", None),
                entry("key.revoke", Some(a)),
            ],
            &mac_key(),
        )
        .await
        .unwrap();
    assert_eq!(
        appended.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let page = |after, limit| AuditFilter {
        after,
        limit,
        ..AuditFilter::default()
    };
    let first = store.list_audit(&page(None, 2)).await.unwrap();
    assert_eq!(first, appended[..2]);
    let rest = store.list_audit(&page(Some(2), 10)).await.unwrap();
    assert_eq!(rest, appended[2..]);
    let of_a = store
        .list_audit(&AuditFilter {
            tenant_id: Some(a),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(of_a.len(), 2);
    let failures = store
        .list_audit(&AuditFilter {
            action: Some("auth.failure".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(failures.len(), 1);
}
