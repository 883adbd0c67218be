//! The binary as a user meets it: `serve` with no configuration and with a bad one, the client
//! commands, and an agent that drains on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN, wait_terminal};
use flotilla_core::task::{Task, TaskStatus};
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::{AgentProcess, ServerProcess};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn flotilla(server: &ServerProcess, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("FLOTILLA_URL", server.base_url())
        .env("FLOTILLA_KEY", ADMIN_KEY)
        .output()
        .expect("the binary runs")
}

fn stdout_json<T: serde::de::DeserializeOwned>(out: &Output) -> T {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test]
async fn serve_without_configuration_prints_an_admin_key_once_that_works() {
    let mut server = ServerProcess::builder(BIN).start().await.unwrap();
    // The key is printed just after the listener starts answering: wait for it.
    let started = std::time::Instant::now();
    let key = loop {
        let logs = server.logs();
        if let Some(key) = logs.split_whitespace().find(|w| w.starts_with("flt_")) {
            break key.to_owned();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no key printed:\n{logs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let client = server.client_with_key(&key).unwrap();
    assert!(client.list_agents().await.unwrap().agents.is_empty());
    assert_eq!(client.ready().await.unwrap().status, "ok");
    // A wrong key is refused.
    let wrong = server.client_with_key("flt_nosuchkey_abc").unwrap();
    assert_eq!(wrong.list_agents().await.unwrap_err().status(), Some(401));

    // The key is shown once: a restart on the same data directory prints none.
    server.restart().await.unwrap();
    let after = server.logs();
    assert_eq!(after.matches("flt_").count(), 1, "{after}");
    assert!(
        client.list_agents().await.is_ok(),
        "the key survives the restart"
    );
    server.terminate().await.unwrap();
}

#[test]
fn unknown_configuration_keys_stop_the_server_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flotilla.toml");
    std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:0\"\nlistem = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listem") && stderr.contains("line 3"),
        "{stderr}"
    );

    let check = Command::new(BIN)
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!check.status.success());
    std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let check = Command::new(BIN)
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let env = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .env("FLOTILLA_SERVER__NOPE", "1")
        .output()
        .unwrap();
    assert!(!env.status.success());
    assert!(String::from_utf8_lossy(&env.stderr).contains("FLOTILLA_SERVER__NOPE"));
}

/// A preset admin key must be as hard to guess as a generated one (issue 15, item 9).
#[test]
fn a_short_bootstrap_admin_key_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flotilla.toml");
    std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path())
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", "flt_admin_password123")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has 11 characters") && stderr.contains("at least 43"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("password123"),
        "the key is not echoed: {stderr}"
    );
}

#[tokio::test]
async fn client_commands_submit_get_list_and_cancel() {
    let server = ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .arg("--config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/code_generator_pool.toml"
        ))
        .start()
        .await
        .unwrap();
    // With no agent the task stays queued, so it can be cancelled.
    let queued: Task = stdout_json(&flotilla(
        &server,
        &[
            "task",
            "submit",
            "--type",
            "code_generator",
            "--input",
            r#"{"x":1}"#,
            "--priority",
            "8",
            "--output",
            "json",
        ],
    ));
    assert_eq!((queued.status, queued.priority), (TaskStatus::Queued, 8));
    let cancelled: Task = stdout_json(&flotilla(
        &server,
        &["task", "cancel", &queued.id.to_string(), "--output", "json"],
    ));
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    let again = flotilla(&server, &["task", "cancel", &queued.id.to_string()]);
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("already finished")
    );

    let _agent = AgentProcess::builder(BIN, "code_generator", server.base_url(), ADMIN_KEY)
        .args(["--median-ms", "5", "--p99-ms", "10"])
        .start()
        .await
        .unwrap();
    let done: Task = stdout_json(&flotilla(
        &server,
        &[
            "task",
            "submit",
            "--type",
            "code_generator",
            "--wait",
            "20",
            "--output",
            "json",
        ],
    ));
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(
        done.output.as_ref().and_then(|o| o.get("simulated")),
        Some(&serde_json::json!(true))
    );
    let got: Task = stdout_json(&flotilla(
        &server,
        &["task", "get", &done.id.to_string(), "--output", "json"],
    ));
    assert_eq!(got.attempts.len(), 1);

    let page: serde_json::Value = stdout_json(&flotilla(
        &server,
        &["task", "list", "--status", "succeeded", "--output", "json"],
    ));
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(1));
    let agents: serde_json::Value =
        stdout_json(&flotilla(&server, &["agents", "list", "--output", "json"]));
    assert_eq!(agents["agents"][0]["agent_type"], "code_generator");

    // Human output is a table that names the task.
    let table = flotilla(&server, &["task", "get", &done.id.to_string()]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("succeeded"));
    // Without a key the client says how to get one.
    let nokey = Command::new(BIN)
        .args(["agents", "list", "--url", &server.base_url()])
        .env_remove("FLOTILLA_KEY")
        .output()
        .unwrap();
    assert!(
        !nokey.status.success() && String::from_utf8_lossy(&nokey.stderr).contains("FLOTILLA_KEY")
    );
}

#[tokio::test]
async fn an_agent_stopped_with_sigterm_finishes_its_task_then_deregisters() {
    let server = ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .start()
        .await
        .unwrap();
    let mut agent = AgentProcess::builder(BIN, "security_scanner", server.base_url(), ADMIN_KEY)
        .env("RUST_LOG", "info,flotilla_agent=debug")
        .args(["--median-ms", "1", "--p99-ms", "1"])
        .start()
        .await
        .unwrap();
    let client = server.client().unwrap();
    let slow = SubmitTask::new(
        "security_scanner",
        serde_json::json!({ "simulate": { "duration_ms": 1500 } }),
    );
    let task = client.submit_task(&slow).await.unwrap();
    // Running in the store is not enough (a task can be claimed as it is submitted, before its
    // request reaches the agent): wait until the agent says it runs it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.logs().contains("Executing task.") {
        assert!(
            Instant::now() < deadline,
            "the task never started\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = agent.terminate().await.unwrap();
    assert!(status.success(), "agent exit {status:?}\n{}", agent.logs());
    let done = wait_terminal(&client, task.id, Duration::from_secs(10)).await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    assert!(
        client.list_agents().await.unwrap().agents.is_empty(),
        "the agent deregistered"
    );
}
