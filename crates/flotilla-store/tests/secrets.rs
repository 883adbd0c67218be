//! The vault's sealed secrets on every `Store`: each behaviour runs against SQLite and
//! PostgreSQL (see `support`). The store keeps bytes; sealing is the server's business, so these
//! tests use opaque byte strings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use chrono::{Duration, TimeZone, Utc};
use flotilla_core::Timestamp;
use flotilla_core::id::TenantId;
use flotilla_store::{DynStore, SealedSecret};
use support::{Backend, next_id, truncate};

behaviours!(
    versions_round_trip_and_number_in_order,
    a_stale_version_number_is_refused,
    old_versions_are_pruned_beyond_keep,
    listing_is_per_tenant_and_prefix_without_values,
    deletion_removes_versions_and_numbers_are_never_reused,
    rewrapping_walks_every_tenant_and_compares_before_swapping,
);

fn t0() -> Timestamp {
    Utc.timestamp_opt(1_700_000_000, 123_456_789)
        .single()
        .unwrap()
}

fn tenant() -> TenantId {
    TenantId(next_id())
}

fn sealed(tenant: TenantId, path: &str, version: u32, at: Timestamp) -> SealedSecret {
    SealedSecret {
        tenant_id: tenant,
        path: path.to_owned(),
        version,
        ciphertext: format!("ct-{path}-{version}").into_bytes(),
        wrapped_key: format!("wk-{path}-{version}").into_bytes(),
        master_key_id: "mk1".to_owned(),
        created_at: at,
        created_by: Some("key1".to_owned()),
    }
}

async fn versions_round_trip_and_number_in_order(store: DynStore) {
    let t = tenant();
    assert_eq!(
        store.last_secret_version(t, "db/password").await.unwrap(),
        None
    );
    assert!(
        store
            .get_secret_version(t, "db/password", None)
            .await
            .unwrap()
            .is_none()
    );
    for v in 1..=3 {
        let s = sealed(t, "db/password", v, t0() + Duration::seconds(i64::from(v)));
        assert!(store.insert_secret_version(&s, 10).await.unwrap());
    }
    assert_eq!(
        store.last_secret_version(t, "db/password").await.unwrap(),
        Some(3)
    );
    let latest = store
        .get_secret_version(t, "db/password", None)
        .await
        .unwrap()
        .unwrap();
    let mut expected = sealed(t, "db/password", 3, truncate(t0() + Duration::seconds(3)));
    assert_eq!(latest, expected);
    let first = store
        .get_secret_version(t, "db/password", Some(1))
        .await
        .unwrap()
        .unwrap();
    expected = sealed(t, "db/password", 1, truncate(t0() + Duration::seconds(1)));
    assert_eq!(first, expected);
    assert!(
        store
            .get_secret_version(t, "db/password", Some(4))
            .await
            .unwrap()
            .is_none()
    );
    // Another tenant sees nothing at the same path.
    assert!(
        store
            .get_secret_version(tenant(), "db/password", None)
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_stale_version_number_is_refused(store: DynStore) {
    let t = tenant();
    assert!(
        store
            .insert_secret_version(&sealed(t, "a", 1, t0()), 10)
            .await
            .unwrap()
    );
    // A concurrent writer that also sealed version 1 loses and must retry with 2.
    assert!(
        !store
            .insert_secret_version(&sealed(t, "a", 1, t0()), 10)
            .await
            .unwrap()
    );
    // Skipping a number is refused too.
    assert!(
        !store
            .insert_secret_version(&sealed(t, "a", 3, t0()), 10)
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_secret_version(&sealed(t, "a", 2, t0()), 10)
            .await
            .unwrap()
    );
    // A first write must be version 1.
    assert!(
        !store
            .insert_secret_version(&sealed(t, "b", 2, t0()), 10)
            .await
            .unwrap()
    );
}

async fn old_versions_are_pruned_beyond_keep(store: DynStore) {
    let t = tenant();
    for v in 1..=5 {
        assert!(
            store
                .insert_secret_version(&sealed(t, "k", v, t0()), 3)
                .await
                .unwrap()
        );
    }
    let list = store.list_secrets(t, "", 100).await.unwrap();
    assert_eq!(list.len(), 1);
    let kept: Vec<u32> = list[0].versions.iter().map(|(v, _)| *v).collect();
    assert_eq!(kept, vec![3, 4, 5]);
    assert_eq!(list[0].latest_version, 5);
    assert!(
        store
            .get_secret_version(t, "k", Some(2))
            .await
            .unwrap()
            .is_none()
    );
}

async fn listing_is_per_tenant_and_prefix_without_values(store: DynStore) {
    let (a, b) = (tenant(), tenant());
    for path in ["app/db", "app/api", "other/x", "apple"] {
        assert!(
            store
                .insert_secret_version(&sealed(a, path, 1, t0()), 10)
                .await
                .unwrap()
        );
    }
    assert!(
        store
            .insert_secret_version(&sealed(b, "app/b-only", 1, t0()), 10)
            .await
            .unwrap()
    );
    let paths = |list: Vec<flotilla_store::SecretSummary>| -> Vec<String> {
        list.into_iter().map(|s| s.path).collect()
    };
    assert_eq!(
        paths(store.list_secrets(a, "", 100).await.unwrap()),
        vec!["app/api", "app/db", "apple", "other/x"]
    );
    assert_eq!(
        paths(store.list_secrets(a, "app/", 100).await.unwrap()),
        vec!["app/api", "app/db"]
    );
    assert_eq!(
        paths(store.list_secrets(a, "", 2).await.unwrap()),
        vec!["app/api", "app/db"]
    );
    assert_eq!(
        paths(store.list_secrets(b, "", 100).await.unwrap()),
        vec!["app/b-only"]
    );
    // A prefix is matched literally, not as a LIKE pattern.
    assert!(store.list_secrets(a, "app%", 100).await.unwrap().is_empty());
    assert!(store.list_secrets(a, "_pp", 100).await.unwrap().is_empty());
}

async fn deletion_removes_versions_and_numbers_are_never_reused(store: DynStore) {
    let t = tenant();
    for v in 1..=2 {
        assert!(
            store
                .insert_secret_version(&sealed(t, "gone", v, t0()), 10)
                .await
                .unwrap()
        );
    }
    let later = t0() + Duration::hours(1);
    assert_eq!(
        store.delete_secret(t, "gone", later).await.unwrap(),
        Some(2)
    );
    assert_eq!(store.delete_secret(t, "gone", later).await.unwrap(), None);
    assert_eq!(
        store.delete_secret(tenant(), "gone", later).await.unwrap(),
        None
    );
    assert!(
        store
            .get_secret_version(t, "gone", None)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.list_secrets(t, "", 100).await.unwrap().is_empty());
    // Writing again continues the numbering: version 1 would be refused.
    assert_eq!(store.last_secret_version(t, "gone").await.unwrap(), Some(2));
    assert!(
        !store
            .insert_secret_version(&sealed(t, "gone", 1, later), 10)
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_secret_version(&sealed(t, "gone", 3, later), 10)
            .await
            .unwrap()
    );
    let list = store.list_secrets(t, "", 100).await.unwrap();
    assert_eq!(list[0].latest_version, 3);
    assert_eq!(
        list[0].created_at,
        truncate(later),
        "a new life starts at re-creation"
    );
}

async fn rewrapping_walks_every_tenant_and_compares_before_swapping(store: DynStore) {
    let (a, b) = (tenant(), tenant());
    for (t, path) in [(a, "x"), (a, "y"), (b, "x")] {
        assert!(
            store
                .insert_secret_version(&sealed(t, path, 1, t0()), 10)
                .await
                .unwrap()
        );
    }
    let mut current = sealed(a, "z", 1, t0());
    current.master_key_id = "mk2".to_owned();
    assert!(store.insert_secret_version(&current, 10).await.unwrap());

    let first = store.secret_keys_to_rewrap("mk2", None, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = store
        .secret_keys_to_rewrap("mk2", Some(&first[1].cursor()), 2)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    let all: Vec<_> = first.iter().chain(&rest).collect();
    assert!(all.iter().all(|k| k.master_key_id == "mk1"));

    for key in &all {
        assert!(store.rewrap_secret_key(key, b"new", "mk2").await.unwrap());
        // The swap compares the old master key id: a second one does nothing.
        assert!(!store.rewrap_secret_key(key, b"newer", "mk2").await.unwrap());
    }
    assert!(
        store
            .secret_keys_to_rewrap("mk2", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.secret_versions_by_master_key().await.unwrap(),
        vec![("mk2".to_owned(), 4)]
    );
    let got = store
        .get_secret_version(b, "x", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.wrapped_key, b"new");
    assert_eq!(
        got.ciphertext, b"ct-x-1",
        "re-wrapping leaves the ciphertext alone"
    );
}
