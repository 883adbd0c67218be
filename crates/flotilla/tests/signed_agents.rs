//! Signed agent traffic end to end (docs/design.md §6): a task submitted to a real control plane runs
//! on a real `flotilla agent`, which verifies the signature of every `/execute`; the same agent
//! refuses an unsigned call made directly to it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN};
use flotilla_core::task::TaskStatus;
use flotilla_core::wire::{ErrorBody, SubmitTask};
use flotilla_testkit::{AgentProcess, ServerProcess};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_on_agents_that_verify_signatures() {
    let server = ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .start()
        .await
        .expect("server starts");
    let agent = AgentProcess::builder(BIN, "code_generator", server.base_url(), ADMIN_KEY)
        .args(["--median-ms", "5", "--p99-ms", "10"])
        .env("FLOTILLA_SIGNATURE_MAX_SKEW_SECS", "60")
        .start()
        .await
        .expect("agent starts");
    let client = server.client_with_key(ADMIN_KEY).unwrap();
    for i in 0..3 {
        let task = client
            .submit_task(&SubmitTask::new(
                "code_generator",
                serde_json::json!({"prompt": format!("signed {i}")}),
            ))
            .await
            .unwrap();
        let done = client
            .get_task(task.id, Some(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(
            done.status,
            TaskStatus::Succeeded,
            "{done:?}\n{}\n{}",
            server.logs(),
            agent.logs()
        );
    }

    // The agent does check: an unsigned call made directly to it is refused and not run.
    let body = serde_json::json!({
        "task_id": uuid::Uuid::now_v7(),
        "attempt": 1,
        "agent_type": "code_generator",
        "input": {},
        "deadline": chrono::Utc::now() + chrono::Duration::seconds(10),
    });
    let response = reqwest::Client::new()
        .post(format!("{}/execute", agent.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let error: ErrorBody = response.json().await.unwrap();
    assert_eq!(error.error.code, "signature_missing");
}
