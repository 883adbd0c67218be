//! The audit log cannot be rewritten quietly (issue 15; docs/security.md, "Audit log"): entries
//! are MAC'd under a key derived from the master key, a log from before MACs is re-anchored once,
//! retention prunes behind a recorded prune so the rest still verifies, and failed
//! authentications are aggregated. Through the real binary's HTTP API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::audit::{GENESIS, MacKey, NewAuditEntry, entry_hash};
use serde_json::{Value, json};
use std::time::Duration;
use support::{ADMIN_KEY, Backend, Database, Location, Settings, TestServer, eventually};

on_both_backends!(
    retention_prunes_behind_a_record_and_the_rest_verifies,
    failed_authentications_are_aggregated_and_cut,
);

async fn audit(server: &TestServer, query: &str) -> Vec<Value> {
    let (status, body) = server
        .send(
            ADMIN_KEY,
            reqwest::Method::GET,
            &format!("/v1/audit?limit=1000{query}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["entries"].as_array().unwrap().clone()
}

async fn verified(server: &TestServer) -> Value {
    let (status, body) = server
        .send(ADMIN_KEY, reqwest::Method::GET, "/v1/audit/verify", None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn create_key(server: &TestServer, name: &str) {
    let (status, body) = server
        .send(
            ADMIN_KEY,
            reqwest::Method::POST,
            "/v1/keys",
            Some(json!({"name": name, "role": "viewer"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Rewrites every row of the SQLite log as a plain SHA-256 chain (what the log was before MACs,
/// and what anyone with write access could compute), with `target` changed on entry `seq`.
async fn rechain_plain(path: &std::path::Path, change: Option<(i64, &str)>) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let store = flotilla_store::open(&flotilla_core::config::Database::Sqlite(path.into()), 1)
        .await
        .unwrap();
    let entries = store
        .list_audit(&flotilla_store::AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut prev = GENESIS.to_owned();
    for mut entry in entries {
        if let Some((seq, target)) = change
            && entry.seq == seq
        {
            entry.target = target.to_owned();
        }
        entry.mac_key = None;
        entry.prev_hash = prev;
        entry.hash = entry_hash(&entry);
        prev = entry.hash.clone();
        sqlx::query(
            "UPDATE audit SET target = ?1, prev_hash = ?2, hash = ?3, mac_key = NULL WHERE seq = ?4",
        )
        .bind(&entry.target)
        .bind(&entry.prev_hash)
        .bind(&entry.hash)
        .bind(entry.seq)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_from_before_macs_is_reanchored_once_and_a_rewritten_one_is_caught() {
    let database = Database::create(Backend::Sqlite);
    let Location::Sqlite(path) = database.location.clone() else {
        unreachable!()
    };
    // A log written before MACs: three plain-hashed entries.
    let store = database.location.open().await;
    let entries: Vec<NewAuditEntry> = (0..3)
        .map(|i| NewAuditEntry {
            at: chrono::Utc::now(),
            actor: Some("old".into()),
            tenant_id: None,
            action: "key.create".into(),
            target: format!("old{i}"),
            outcome: "success".into(),
            source: None,
        })
        .collect();
    store
        .append_audit(&entries, &MacKey::new("x", [0; 32]))
        .await
        .unwrap();
    rechain_plain(&path, None).await;
    // As if they existed when the migration to MACs ran.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE audit_legacy SET through_seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let settings = database.location.configure(Settings::default());
    let server = TestServer::start_on(store.clone(), settings.clone()).await;
    let log = audit(&server, "").await;
    assert_eq!(log[3]["action"], "audit.reanchor", "{log:?}");
    assert!(log[3]["target"].as_str().unwrap().contains("entries 1..3"));
    assert!(log[3]["mac_key"].is_string());
    create_key(&server, "after").await;
    let found = verified(&server).await;
    assert_eq!(found["intact"], true, "{found}");
    server.stop().await;
    // Once: a restart appends no second re-anchor.
    let server = TestServer::start_on(store.clone(), settings.clone()).await;
    let reanchors = audit(&server, "&action=audit.reanchor").await;
    assert_eq!(reanchors.len(), 1);
    server.stop().await;

    // Someone with write access to the database changes an entry and re-chains the whole log
    // with plain hashes (they cannot compute MACs without the master key): caught, and not
    // re-anchored at the next start.
    rechain_plain(&path, Some((2, "nothing to see"))).await;
    let server = TestServer::start_on(store, settings).await;
    let found = verified(&server).await;
    assert_eq!(found["intact"], false, "{found}");
    assert!(
        found["problem"].as_str().unwrap().contains("plain hash"),
        "{found}"
    );
    server.stop().await;
}

async fn retention_prunes_behind_a_record_and_the_rest_verifies(backend: Backend) {
    let server = TestServer::start(
        backend,
        Settings::default()
            .set("audit.retention_s", 1)
            .set("audit.prune_interval_s", 1),
    )
    .await;
    for n in 0..3 {
        create_key(&server, &format!("k{n}")).await;
    }
    eventually("old entries pruned", Duration::from_secs(10), || async {
        let log = audit(&server, "").await;
        log.first().is_some_and(|e| e["seq"].as_i64() > Some(3))
    })
    .await;
    let log = audit(&server, "").await;
    assert!(log.iter().any(|e| e["action"] == "audit.prune"), "{log:?}");
    let found = verified(&server).await;
    assert_eq!(found["intact"], true, "{found}");
    server.stop().await;
}

async fn failed_authentications_are_aggregated_and_cut(backend: Backend) {
    let server = TestServer::start(
        backend,
        Settings::default().set("rate_limits.auth_failures", "off"),
    )
    .await;
    let long = format!("/v1/tasks/{}", "x".repeat(20_000));
    let (status, _) = server
        .send("flt_guess_wrongsecret", reqwest::Method::GET, &long, None)
        .await;
    assert_eq!(status, 401);
    for _ in 0..200 {
        let (status, _) = server
            .send(
                "flt_guess_wrongsecret",
                reqwest::Method::GET,
                "/v1/tasks",
                None,
            )
            .await;
        assert_eq!(status, 401);
    }
    let failures = audit(&server, "&action=auth.failure").await;
    // One entry per source and minute (the test may straddle a minute: then a second one and
    // the count of the first), not 201.
    assert!(!failures.is_empty() && failures.len() <= 3, "{failures:?}");
    assert!(
        failures
            .iter()
            .all(|e| e["target"].as_str().unwrap().len() <= 256),
        "{failures:?}"
    );
    server.stop().await;
}
