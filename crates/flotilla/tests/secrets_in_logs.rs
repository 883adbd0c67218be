//! No secret reaches a log (docs/design.md §10, §11): a control plane at the most verbose log level,
//! with a preset admin key, local agents holding a generated agent key, authenticated and
//! unauthenticated requests, and `/metrics` — its output (agents' output included) holds no API
//! key and no signing secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN};
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::ServerProcess;
use std::time::{Duration, Instant};

/// Every `flt_<id>_<secret>` in a text: a key, whoever it belongs to.
fn keys_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            w.strip_prefix("flt_")
                .and_then(|rest| rest.split_once('_'))
                .is_some_and(|(id, secret)| !id.is_empty() && secret.len() >= 20)
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_signing_secret_is_ever_logged() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flotilla.toml");
    std::fs::write(
        &config,
        // Agents do not inherit `RUST_LOG`: their pool's `env` makes them as verbose.
        "[log]\nlevel = \"trace\"\n[[pools]]\nname = \"code_generator\"\nmin_instances = 2\nmax_instances = 2\nenv = { RUST_LOG = \"trace\" }\n",
    )
    .unwrap();
    let mut server = ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", "trace")
        .arg("--config")
        .arg(&config)
        .start()
        .await
        .expect("server starts");
    let client = server.client_with_key(ADMIN_KEY).unwrap();
    let started = Instant::now();
    while client.list_agents().await.unwrap().agents.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The signing secrets the control plane holds for its agents (never served by the API).
    let store = flotilla_store::SqliteStore::open(&server.data_dir().join("flotilla.db"), 1)
        .await
        .unwrap();
    let signing_secrets: Vec<String> = flotilla_store::FleetStore::list_agents(&store)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.signing_secret)
        .collect();
    assert_eq!(signing_secrets.len(), 2);
    assert!(signing_secrets.iter().all(|s| s.len() >= 32));
    for _ in 0..5 {
        let task = client
            .submit_task(&SubmitTask::new(
                "code_generator",
                serde_json::json!({"x": 1}),
            ))
            .await
            .unwrap();
        client
            .get_task(task.id, Some(Duration::from_secs(10)))
            .await
            .unwrap();
    }
    // A wrong key, a malformed one, and /metrics with the right one.
    let wrong = server
        .client_with_key("flt_wrongkeyid0_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq")
        .unwrap();
    assert!(wrong.list_agents().await.is_err());
    let http = reqwest::Client::new();
    let metrics = http
        .get(format!("{}/metrics", server.base_url()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    server.terminate().await.unwrap();

    // All of it: a secret early in a verbose log must not hide behind the tail.
    let logs = server.all_logs();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "not verbose: {logs}"
    );
    let leaked = keys_in(&logs);
    assert!(leaked.is_empty(), "keys in the logs: {leaked:?}");
    let secret = ADMIN_KEY.rsplit('_').next().unwrap();
    assert!(
        !logs.contains(secret),
        "the admin key's secret is in the logs"
    );
    for secret in &signing_secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a signing secret is in the logs"
        );
    }
}
