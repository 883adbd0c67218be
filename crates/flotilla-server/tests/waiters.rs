//! Long-polls leave nothing behind (issue 15, "waiters never leak"): every way out of
//! `GET /v1/tasks/{id}?wait=N` — a missing task, another tenant's task, a task already finished,
//! a timeout, a wake-up — removes its waiter, which `flotilla_waiters_parked` shows. On SQLite
//! and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::auth::Role;
use flotilla_core::id::TenantId;
use futures::StreamExt;
use std::time::Duration;
use support::{ADMIN_KEY, Backend, Settings, TestServer, eventually, task};

on_both_backends!(a_hundred_thousand_long_polls_leave_no_waiter);

/// A configured type without instances: its tasks stay queued until cancelled.
const IDLE: &str = "idle";

/// Waits that end at once, then the parked-waiter gauge.
const WAITS: usize = 100_000;

async fn parked(server: &TestServer) -> i64 {
    let metrics = server.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("flotilla_waiters_parked "))
        .unwrap_or_else(|| panic!("no flotilla_waiters_parked in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

async fn a_hundred_thousand_long_polls_leave_no_waiter(backend: Backend) {
    let server = TestServer::start(
        backend,
        Settings::default()
            .pool(IDLE)
            .set("rate_limits.per_key", "off")
            .set("rate_limits.per_tenant", "off"),
    )
    .await;
    let other_tenant = TenantId(uuid::Uuid::now_v7());
    let stranger = server.create_key(Role::Viewer, other_tenant).await;

    // The gauge counts a waiter while it waits, and drops it when the task ends.
    let waiting = server.submit(&task(IDLE, serde_json::json!({}))).await;
    let poll = {
        let http = reqwest::Client::new();
        let url = server.url(&format!("/v1/tasks/{}?wait=20", waiting.id));
        tokio::spawn(async move { http.get(url).bearer_auth(ADMIN_KEY).send().await })
    };
    eventually(
        "the long-poll is parked",
        Duration::from_secs(5),
        || async { parked(&server).await == 1 },
    )
    .await;
    server.client.cancel_task(waiting.id).await.unwrap();
    assert_eq!(poll.await.unwrap().unwrap().status(), 200);
    assert_eq!(parked(&server).await, 0);

    // A finished task (answered at once), a missing one and another tenant's (404).
    let finished = waiting.id;
    let missing = uuid::Uuid::now_v7();
    let http = reqwest::Client::new();
    let statuses = futures::stream::iter(0..WAITS)
        .map(|i| {
            let (url, key) = match i % 3 {
                0 => (format!("/v1/tasks/{finished}?wait=5"), ADMIN_KEY),
                1 => (format!("/v1/tasks/{missing}?wait=5"), ADMIN_KEY),
                _ => (format!("/v1/tasks/{finished}?wait=5"), stranger.as_str()),
            };
            let request = http.get(server.url(&url)).bearer_auth(key);
            async move { request.send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(32)
        .fold([0usize; 2], |mut counts, status| async move {
            match status {
                200 => counts[0] += 1,
                404 => counts[1] += 1,
                other => panic!("unexpected status {other}"),
            }
            counts
        })
        .await;
    assert_eq!(statuses, [WAITS.div_ceil(3), WAITS - WAITS.div_ceil(3)]);
    assert_eq!(
        parked(&server).await,
        0,
        "every long-poll removed its waiter"
    );

    // A timed-out wait removes its waiter too.
    let queued = server.submit(&task(IDLE, serde_json::json!({}))).await;
    let (status, _) = server
        .send(
            ADMIN_KEY,
            reqwest::Method::GET,
            &format!("/v1/tasks/{}?wait=0.05", queued.id),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(parked(&server).await, 0);
    server.stop().await;
}
