//! What a local agent process may see of its control plane's environment (docs/design.md §11): only
//! `PATH`, `HOME`, locale and time zone, its pool's `env` (secrets resolved) and the variables the
//! agent needs — never the master key, the bootstrap admin key or anything else exported to
//! `flotilla serve`. The pool's command dumps its environment, then runs the real
//! `flotilla agent`, which must still register and run a task on what it was given.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN, wait_terminal};
use flotilla_core::task::TaskStatus;
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::ServerProcess;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const POOL: &str = "code_generator";
/// 32 bytes in hex: the vault's master key, which no agent may see.
const MASTER_KEY: &str = "8f3e6a1c2b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7a8b9c0d1e2f3a4b";
/// A variable exported to `flotilla serve` that is nobody else's business.
const MARKER: (&str, &str) = ("FLOTILLA_TEST_UNRELATED_MARKER", "marker-3d9a1f");
const SECRET_VALUE: &str = "pool-secret-value-71c2";

/// The dump as a map; a value spanning lines (none is expected) keeps its first line.
fn parse(dump: &str) -> BTreeMap<String, String> {
    dump.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_agents_get_only_their_pool_env_and_what_they_need() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("agent.env");
    let config = dir.path().join("flotilla.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[fleet]
autoscale_interval_ms = 200

[[pools]]
name = "{POOL}"
provisioner = "local"
capacity = 2
min_instances = 1
max_instances = 1
command = ["/bin/sh", "-c", "env > '{dump}.tmp' && mv '{dump}.tmp' '{dump}'; exec '{BIN}' agent --median-ms 5 --p99-ms 10"]
env = {{ POOL_PLAIN = "plain-value", POOL_SECRET = "secret://agents/token" }}
"#,
            dump = dump.display()
        ),
    )
    .unwrap();
    let server = ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .env("FLOTILLA_MASTER_KEY", MASTER_KEY)
        .env(MARKER.0, MARKER.1)
        .arg("--config")
        .arg(&config)
        .start()
        .await
        .expect("server starts");
    let client = server.client_with_key(ADMIN_KEY).unwrap();
    // The process is not started until its secret exists (it is retried with backoff).
    client
        .put_secret("agents/token", SECRET_VALUE, None)
        .await
        .unwrap();
    let started = Instant::now();
    while !dump.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the agent never started\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&dump).unwrap();
    let env = parse(&text);

    // None of the control plane's secrets, nor anything else it was given.
    for secret in [MASTER_KEY, ADMIN_KEY, MARKER.1] {
        assert!(!text.contains(secret), "the agent saw `{secret}`:\n{text}");
    }
    for name in [
        "FLOTILLA_MASTER_KEY",
        "FLOTILLA_BOOTSTRAP_ADMIN_KEY",
        MARKER.0,
    ] {
        assert!(!env.contains_key(name), "the agent saw {name}:\n{text}");
    }
    // The pool's env, its secret resolved, and what the agent needs.
    let get = |name: &str| env.get(name).map(String::as_str);
    assert_eq!(get("POOL_PLAIN"), Some("plain-value"), "{text}");
    assert_eq!(get("POOL_SECRET"), Some(SECRET_VALUE), "{text}");
    assert_eq!(get("AGENT_TYPE"), Some(POOL), "{text}");
    assert_eq!(
        get("FLOTILLA_CONTROL_PLANE"),
        Some(server.base_url().as_str())
    );
    assert!(
        get("FLOTILLA_KEY").is_some_and(|k| k.starts_with("flt_") && k != ADMIN_KEY),
        "{text}"
    );
    assert_eq!(get("FLOTILLA_INSTANCE_NAME"), Some("code_generator-1"));
    assert_eq!(
        get("FLOTILLA_PARENT_PID"),
        server.pid().map(|p| p.to_string()).as_deref()
    );
    assert!(get("PATH").is_some(), "{text}");
    // Nothing else, besides what the shell sets itself.
    let allowed = [
        "POOL_PLAIN",
        "POOL_SECRET",
        "AGENT_TYPE",
        "FLOTILLA_CONTROL_PLANE",
        "FLOTILLA_KEY",
        "FLOTILLA_INSTANCE_NAME",
        "FLOTILLA_PARENT_PID",
        "PATH",
        "HOME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "PWD",
        "SHLVL",
        "_",
    ];
    let extra: Vec<&String> = env
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()) && !k.starts_with("LC_"))
        .collect();
    assert!(extra.is_empty(), "inherited {extra:?}:\n{text}");

    // And that is enough for the real agent: it registers and runs a task.
    let task = client
        .submit_task(&SubmitTask::new(POOL, serde_json::json!({"prompt": "env"})))
        .await
        .unwrap();
    let done = wait_terminal(&client, task.id, Duration::from_secs(20)).await;
    assert_eq!(
        done.status,
        TaskStatus::Succeeded,
        "{done:?}\n{}",
        server.logs()
    );
}
