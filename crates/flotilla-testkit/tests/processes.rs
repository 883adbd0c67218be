//! The process harnesses against a stand-in binary (`fake-flotilla`) that takes the same flags
//! as `flotilla serve` and `flotilla agent`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flotilla_testkit::{AgentProcess, HarnessError, ServerProcess, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_fake-flotilla");

#[tokio::test]
async fn server_starts_restarts_and_stops() {
    let mut server = ServerProcess::builder(BIN)
        .env(
            "FLOTILLA_BOOTSTRAP_ADMIN_KEY",
            "flt_admin_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG",
        )
        .arg("--extra")
        .arg("yes")
        .start()
        .await
        .unwrap();
    assert_eq!(
        server.base_url(),
        format!("http://127.0.0.1:{}", server.port())
    );
    assert_eq!(
        server.admin_key(),
        Some("flt_admin_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG")
    );
    let key = reqwest::get(format!("{}/key", server.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        key, "flt_admin_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG",
        "the environment reaches the process"
    );
    assert_eq!(
        server.client().unwrap().health().await.unwrap().status,
        "ok"
    );

    let first_pid = server.pid().unwrap();
    let status = server.kill_hard().await.unwrap();
    assert!(!status.success());
    assert!(server.client().unwrap().health().await.is_err());

    server.restart().await.unwrap();
    assert_ne!(server.pid(), Some(first_pid));
    assert_eq!(
        server.client().unwrap().health().await.unwrap().status,
        "ok"
    );
    let starts = std::fs::read_to_string(server.data_dir().join("starts")).unwrap();
    assert_eq!(starts, "xx", "the restart reused the data directory");

    let status = server.terminate().await.unwrap();
    assert!(status.success(), "SIGTERM leads to a clean exit: {status}");
    let logs = server.logs();
    assert!(logs.contains("fake control plane on 127.0.0.1"), "{logs}");
    assert!(logs.contains("terminated"), "{logs}");
    assert!(logs.contains("start #2"), "{logs}");
    assert!(matches!(
        server.terminate().await,
        Err(HarnessError::NotRunning(_))
    ));
}

#[tokio::test]
async fn a_server_that_exits_reports_its_output() {
    let err = ServerProcess::start(BIN, [("FAKE_FLOTILLA_FAIL", "1")], Vec::<String>::new())
        .await
        .unwrap_err();
    match err {
        HarnessError::Exited { logs, .. } => assert!(logs.contains("failing on purpose"), "{logs}"),
        other => panic!("expected Exited, got {other:?}"),
    }
}

#[tokio::test]
async fn dropping_a_server_kills_it() {
    let server = ServerProcess::builder(BIN).start().await.unwrap();
    let url = server.base_url();
    drop(server);
    let client = flotilla_client::Client::new(&url, None).unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if client.health().await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone);
}

#[tokio::test]
async fn agent_process_reports_its_id_once_registered() {
    let port = free_port().unwrap();
    let mut agent =
        AgentProcess::builder(BIN, "code_generator", "http://127.0.0.1:1", "flt_agent_key")
            .port(port)
            .arg("--capacity")
            .arg("2")
            .start()
            .await
            .unwrap();
    let first = agent.id().unwrap();
    assert_eq!(agent.url(), format!("http://127.0.0.1:{port}"));
    assert!(
        reqwest::get(format!("{}/health", agent.url()))
            .await
            .unwrap()
            .status()
            .is_success()
    );

    agent.restart().await.unwrap();
    assert_ne!(
        agent.id(),
        Some(first),
        "the id comes from the new start's line"
    );
    assert!(agent.terminate().await.unwrap().success());
}
