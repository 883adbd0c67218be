//! Leases (docs/design.md §4.5): a task whose control plane dies mid-attempt returns to the queue when
//! its lease expires and is completed by the next one, with a `lost` attempt on record; a live
//! control plane renews its leases, so a long attempt is never run twice; an orderly stop lets
//! in-flight attempts finish. (The SIGKILL test of the real binary lives with the end-to-end tests.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use chrono::Utc;
use flotilla_core::id::{TaskId, TenantId};
use flotilla_core::task::{NewTask, Task, TaskStatus};
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::{Behaviour, ScriptedAgent};
use serde_json::json;
use std::time::Duration;
use support::{Backend, Database, Settings, TestServer, task};

on_both_backends!(
    a_control_plane_that_dies_mid_attempt_has_its_task_completed_by_the_next,
    a_task_claimed_by_a_dead_owner_is_requeued_once_its_lease_expires,
    leases_are_renewed_so_a_long_attempt_runs_once,
);

const ECHO: &str = "echo";

fn outcomes(task: &Task) -> Vec<&str> {
    task.attempts.iter().map(|a| a.outcome.as_str()).collect()
}

async fn a_control_plane_that_dies_mid_attempt_has_its_task_completed_by_the_next(
    backend: Backend,
) {
    let database = Database::create(backend);
    let settings = database.location.configure(Settings::default().pool(ECHO));
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    agent.push_behaviours([Behaviour::Hang]);

    // The first control plane runs on a runtime of its own, so that it can die in the middle of
    // an attempt: shutting that runtime down drops all its loops and connections at once, with
    // no orderly stop, no result written and no lease given back.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (location, first_settings) = (database.location.clone(), settings.clone());
    let start =
        move || async move { TestServer::start_on(location.open().await, first_settings).await };
    // `block_on` may not run on a thread of the test's runtime; the loops it starts go on in
    // `doomed` after it returns.
    let first =
        std::thread::scope(|scope| scope.spawn(|| doomed.block_on(start())).join().unwrap());
    first.register(&agent, ECHO, 1).await;
    let submitted = first
        .submit(&SubmitTask {
            timeout_ms: Some(60_000),
            ..task(ECHO, json!({"n": 1}))
        })
        .await;
    assert!(
        agent.wait_for_calls(1, Duration::from_secs(5)).await,
        "the first attempt started"
    );
    assert_eq!(first.status(submitted.id).await, TaskStatus::Running);
    doomed.shutdown_background();
    drop(first);

    // The next control plane on the same database knows the instance from the store.
    let next = TestServer::start_on(database.location.open().await, settings).await;
    let done = next.finish(submitted.id).await;
    assert_eq!(
        (done.status, done.attempt),
        (TaskStatus::Succeeded, 2),
        "{done:?}"
    );
    assert_eq!(outcomes(&done), ["lost", "succeeded"]);
    assert_eq!(
        agent.attempts_for(submitted.id),
        [1, 2],
        "the agent saw the re-run as attempt 2"
    );
    assert_eq!(
        done.output.as_ref().map(|o| o["input"].clone()),
        Some(json!({"n": 1}))
    );
    next.stop().await;
    database.remove().await;
}

async fn a_task_claimed_by_a_dead_owner_is_requeued_once_its_lease_expires(backend: Backend) {
    let database = Database::create(backend);
    let store = database.location.open().await;
    // A task claimed by a control plane that is gone, with a lease running for another second.
    let now = Utc::now();
    let id = TaskId(uuid::Uuid::now_v7());
    let new = NewTask {
        id,
        tenant_id: TenantId::DEFAULT,
        agent_type: ECHO.to_owned(),
        input: json!({"n": 2}),
        priority: 5,
        complexity: None,
        idempotency_key: None,
        timeout_ms: 5_000,
        max_attempts: 3,
        trace_id: None,
        claim: None,
        created_at: now,
    };
    store.insert_tasks(&[new]).await.unwrap();
    let lease_end = now + chrono::Duration::seconds(1);
    let claimed = store
        .claim_tasks(ECHO, TenantId::DEFAULT, 1, "dead-replica", lease_end, now)
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|t| t.id).collect::<Vec<_>>(), [id]);

    let server = TestServer::start_on(
        store,
        database.location.configure(Settings::default().pool(ECHO)),
    )
    .await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    server.register(&agent, ECHO, 1).await;
    let done = server.finish(id).await;
    assert_eq!(
        (done.status, done.attempt),
        (TaskStatus::Succeeded, 2),
        "{done:?}"
    );
    assert_eq!(outcomes(&done), ["lost", "succeeded"]);
    assert!(
        done.attempts[1].started_at >= lease_end - chrono::Duration::milliseconds(1),
        "a live lease is respected"
    );
    assert_eq!(agent.attempts_for(id), [2]);
    server.stop().await;
    database.remove().await;
}

async fn leases_are_renewed_so_a_long_attempt_runs_once(backend: Backend) {
    // Leases last 1 s; the attempt takes 2 s.
    let server = TestServer::start(backend, Settings::default().pool(ECHO)).await;
    let agent = ScriptedAgent::start(Behaviour::Succeed {
        delay: Duration::from_millis(2_000),
    })
    .unwrap();
    server.register(&agent, ECHO, 2).await;
    let submitted = server
        .submit(&SubmitTask {
            timeout_ms: Some(10_000),
            ..task(ECHO, json!({}))
        })
        .await;
    let done = server.finish(submitted.id).await;
    assert_eq!(
        (done.status, done.attempt),
        (TaskStatus::Succeeded, 1),
        "{done:?}"
    );
    assert_eq!(outcomes(&done), ["succeeded"]);
    assert_eq!(agent.calls(), 1, "the task was not run twice");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orderly_stop_lets_in_flight_attempts_finish_and_keeps_queued_work() {
    let database = Database::create(Backend::Sqlite);
    let settings = database.location.configure(Settings::default().pool(ECHO));
    let agent = ScriptedAgent::start(Behaviour::Succeed {
        delay: Duration::from_millis(500),
    })
    .unwrap();
    let first = TestServer::start_on(database.location.open().await, settings.clone()).await;
    first.register(&agent, ECHO, 1).await;
    let running = first.submit(&task(ECHO, json!({"n": 1}))).await;
    assert!(agent.wait_for_calls(1, Duration::from_secs(5)).await);
    // The only slot is busy, so this one is still queued when the stop begins.
    let queued = first.submit(&task(ECHO, json!({"n": 2}))).await;
    first.stop().await;

    let store = database.location.open().await;
    let after_stop = store.get_task(None, running.id).await.unwrap().unwrap();
    assert_eq!(
        (after_stop.status, after_stop.attempt),
        (TaskStatus::Succeeded, 1),
        "the in-flight attempt finished"
    );
    assert_eq!(
        store
            .get_task(None, queued.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TaskStatus::Queued
    );

    let next = TestServer::start_on(store, settings).await;
    assert_eq!(next.finish(queued.id).await.status, TaskStatus::Succeeded);
    assert_eq!(agent.calls(), 2);
    next.stop().await;
    database.remove().await;
}
