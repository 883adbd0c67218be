//! Fair share of the queue between tenants (issue 15, "fairness"; docs/design.md §4): one
//! tenant's backlog does not delay another's work past a few slot turnovers, and a tenant's
//! queue has a limit. On SQLite and PostgreSQL, through the real HTTP API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::auth::Role;
use flotilla_core::id::TaskId;
use flotilla_testkit::{Behaviour, ScriptedAgent};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use support::{Backend, Settings, TestServer, eventually};

on_both_backends!(
    a_newcomer_starts_within_a_few_slot_turnovers_of_a_backlog,
    a_full_queue_refuses_with_429_naming_the_limit,
);

const WORK: &str = "work";

/// Submits `n` tasks with `key`, 32 at a time; their ids.
async fn submit_many(server: &TestServer, key: &str, n: usize) -> Vec<TaskId> {
    let client = server.client_with(key);
    let mut ids = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        pending.spawn(async move {
            client
                .submit_task(&support::task(WORK, json!({"n": i})))
                .await
                .unwrap()
                .id
        });
        if pending.len() >= 32 {
            ids.push(pending.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(id) = pending.join_next().await {
        ids.push(id.unwrap());
    }
    ids
}

async fn a_newcomer_starts_within_a_few_slot_turnovers_of_a_backlog(backend: Backend) {
    let server = TestServer::start(
        backend,
        Settings::default()
            .pool(WORK)
            .set("rate_limits.per_key", "100000/s")
            .set("rate_limits.per_tenant", "100000/s")
            .set("scheduler.default_timeout_ms", 60_000),
    )
    .await;
    let (a, b) = (
        server.create_tenant("a").await,
        server.create_tenant("b").await,
    );
    let key_a = server.create_key(Role::Submitter, a).await;
    let key_b = server.create_key(Role::Submitter, b).await;
    // Tenant A queues 5,000 tasks before any instance runs.
    submit_many(&server, &key_a, 5_000).await;
    // One platform instance with 4 slots, 20 ms a task: A's backlog takes 25 s to drain.
    let agent = ScriptedAgent::start(Behaviour::Succeed {
        delay: Duration::from_millis(20),
    })
    .unwrap();
    server.register(&agent, WORK, 4).await;
    assert!(agent.wait_for_calls(40, Duration::from_secs(20)).await);
    // Then tenant B submits 10.
    let before = agent.calls();
    let b_ids: HashSet<TaskId> = submit_many(&server, &key_b, 10).await.into_iter().collect();
    let client_b = server.client_with(&key_b);
    for id in &b_ids {
        TestServer::finish_with(&client_b, *id).await;
    }
    let requests = agent.requests();
    let last_b = requests
        .iter()
        .rposition(|r| b_ids.contains(&r.task_id))
        .unwrap();
    let a_between = requests[before..=last_b]
        .iter()
        .filter(|r| !b_ids.contains(&r.task_id))
        .count();
    // Shared fairly, B's 10 tasks take about 10 of the next 20 slots (plus the 4 in flight when
    // B arrived); behind A's backlog they would wait for thousands.
    assert!(
        a_between <= 30,
        "{a_between} of tenant A's tasks started between B's submission and B's last start"
    );
    agent.stop();
    server.stop().await;
}

async fn a_full_queue_refuses_with_429_naming_the_limit(backend: Backend) {
    let server = TestServer::start(
        backend,
        Settings::default()
            .pool(WORK)
            .set("scheduler.fair_share.max_queued_per_tenant", 20),
    )
    .await;
    let (a, b) = (
        server.create_tenant("a").await,
        server.create_tenant("b").await,
    );
    let key_a = server.create_key(Role::Submitter, a).await;
    let key_b = server.create_key(Role::Submitter, b).await;
    let submit = |key: String| {
        let server = &server;
        async move {
            server
                .send(
                    &key,
                    reqwest::Method::POST,
                    "/v1/tasks",
                    Some(json!({"agent_type": WORK, "input": {}})),
                )
                .await
        }
    };
    // No instance: everything stays queued. One at a time: submissions in flight while the
    // store counts may pass the limit (scheduler/queue_limit.rs), sequential ones never do.
    for _ in 0..20 {
        assert_eq!(submit(key_a.clone()).await.0, 202);
    }
    let (status, body) = submit(key_a.clone()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "queue_full");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("max_queued_per_tenant") && message.contains(&a.to_string()),
        "{message}"
    );
    // The other tenant is not affected.
    assert_eq!(submit(key_b.clone()).await.0, 202);
    // Once A's queue drains, A may submit again (the count is read again after a second).
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    server.register(&agent, WORK, 4).await;
    eventually("A's queue drains", Duration::from_secs(20), || async {
        agent.calls() >= 21
    })
    .await;
    eventually("A may submit again", Duration::from_secs(5), || async {
        submit(key_a.clone()).await.0 == 202
    })
    .await;
    agent.stop();
    server.stop().await;
}
