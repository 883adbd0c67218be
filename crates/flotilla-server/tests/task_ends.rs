//! Every accepted task ends (docs/design.md §4): a queued task that no instance takes within its
//! pool's queue timeout (or the scheduler's default) fails, saying why, and its long-poll wakes.
//! On SQLite and PostgreSQL, through the real HTTP API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::task::TaskStatus;
use std::time::{Duration, Instant};
use support::{Backend, Settings, TestServer, task};

on_both_backends!(queued_tasks_no_instance_takes_fail_after_their_queue_timeout);

async fn queued_tasks_no_instance_takes_fail_after_their_queue_timeout(backend: Backend) {
    let settings = Settings::default().set("scheduler.queue_timeout_s", 2).raw(
        "[[pools]]\nname = \"gone\"\nprovisioner = \"static\"\nmin_instances = 0\n\
             queue_timeout_s = 1\n\
             [[pools]]\nname = \"patient\"\nprovisioner = \"static\"\nmin_instances = 0\n\
             queue_timeout_s = 0\n\
             [[pools]]\nname = \"plain\"\nprovisioner = \"static\"\nmin_instances = 0\n",
    );
    let server = TestServer::start(backend, settings).await;
    // An instance of `gone` came and went: its type has nobody left to run its tasks.
    let id = server.register_url("http://127.0.0.1:9", "gone", 1).await;
    server.deregister(id).await;
    let started = Instant::now();
    let of_pool = server.submit(&task("gone", serde_json::json!({}))).await;
    let of_default = server.submit(&task("plain", serde_json::json!({}))).await;
    let patient = server.submit(&task("patient", serde_json::json!({}))).await;

    // The long-poll wakes when the leader fails it, not at its own deadline.
    let ended = server
        .client
        .get_task(of_pool.id, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(ended.status, TaskStatus::Failed, "{ended:?}");
    assert_eq!(
        ended.error.as_deref(),
        Some(
            "not started within 1 s of being due: no instance of `gone` took it \
             (queue_timeout_s of pool `gone`)"
        )
    );
    assert!(ended.attempts.is_empty());
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(8),
        "{waited:?}"
    );

    let ended = server
        .client
        .get_task(of_default.id, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(ended.status, TaskStatus::Failed, "{ended:?}");
    assert!(
        ended
            .error
            .as_deref()
            .unwrap()
            .ends_with("(scheduler.queue_timeout_s)"),
        "{ended:?}"
    );
    // A pool whose timeout is 0 waits for ever.
    assert_eq!(server.status(patient.id).await, TaskStatus::Queued);
    server.stop().await;
}
