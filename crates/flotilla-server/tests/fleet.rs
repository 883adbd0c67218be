//! Fleet operations end to end (docs/design.md §5) with real HTTP agents: the pool's strategy, outlier
//! ejection, active health checks, heartbeat loss cutting in-flight attempts short, a flapping
//! agent, and the pools and events API. Every accepted task reaches a terminal state, and no
//! attempt of a task runs on two instances.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::agent::AgentStatus;
use flotilla_core::id::{AgentId, TaskId};
use flotilla_core::task::TaskStatus;
use flotilla_core::wire::{RegisterAgent, SubmitTask};
use flotilla_testkit::{Behaviour, ScriptedAgent};
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::{Backend, Settings, TestServer, eventually, task};

const ECHO: &str = "echo";

fn echo(max_attempts: i32) -> SubmitTask {
    SubmitTask {
        max_attempts: Some(max_attempts),
        ..task(ECHO, json!({}))
    }
}

async fn register_weighted(server: &TestServer, agent: &ScriptedAgent, weight: u32) -> AgentId {
    let body = RegisterAgent {
        agent_type: ECHO.to_owned(),
        url: agent.url(),
        capacity: 100,
        weight: Some(weight),
        metadata: None,
        version: None,
    };
    server.client.register_agent(&body).await.unwrap().id
}

async fn status_of(server: &TestServer, id: AgentId) -> AgentStatus {
    server.client.get_agent(id).await.unwrap().status
}

async fn event_messages(server: &TestServer, query: &[(&str, String)]) -> Vec<String> {
    let list = server.client.list_events(query).await.unwrap();
    list.events.into_iter().map(|e| e.message).collect()
}

/// Runs `n` tasks one after another, so each placement sees the previous one finished.
async fn run_sequentially(server: &TestServer, n: usize) {
    for _ in 0..n {
        let done = server.finish(server.submit(&echo(1)).await.id).await;
        assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_pools_spread_tasks_evenly() {
    let settings = Settings::default()
        .pool(ECHO)
        .raw("strategy = \"round_robin\"");
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let agents: Vec<_> = (0..3)
        .map(|_| ScriptedAgent::start(Behaviour::SUCCEED).unwrap())
        .collect();
    for a in &agents {
        server.register(a, ECHO, 4).await;
    }
    run_sequentially(&server, 30).await;
    let calls: Vec<usize> = agents.iter().map(ScriptedAgent::calls).collect();
    assert_eq!(calls, [10, 10, 10]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_the_weights() {
    let settings = Settings::default()
        .pool(ECHO)
        .raw("strategy = \"weighted_round_robin\"");
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let heavy = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let light = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    register_weighted(&server, &heavy, 3).await;
    register_weighted(&server, &light, 1).await;
    run_sequentially(&server, 40).await;
    assert_eq!((heavy.calls(), light.calls()), (30, 10));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_instance_is_ejected_and_the_work_succeeds_elsewhere() {
    let settings = Settings::default().pool(ECHO).raw(
        "[pools.outlier]\nconsecutive_failures = 3\nmin_requests = 1000\nbase_ejection_s = 60",
    );
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let broken = ScriptedAgent::start(Behaviour::Fail { status: 500 }).unwrap();
    let healthy = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let broken_id = server.register(&broken, ECHO, 2).await;
    server.register(&healthy, ECHO, 2).await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(server.submit(&echo(5)).await.id);
    }
    for id in ids {
        let done = server.finish(id).await;
        assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    }
    assert_eq!(status_of(&server, broken_id).await, AgentStatus::Ejected);
    // Three failures in a row eject it; at most its capacity was in flight at that moment.
    assert!(
        broken.calls() <= 3 + 2,
        "broken got {} calls",
        broken.calls()
    );
    let kind = [("kind", "instance".to_owned())];
    let ejected = format!("instance {broken_id} busy → ejected: 3 consecutive failures");
    eventually(
        "the ejection is an event",
        Duration::from_secs(5),
        || async {
            event_messages(&server, &kind)
                .await
                .iter()
                .any(|m| m.starts_with(&ejected))
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_checks_take_an_instance_out_until_it_recovers() {
    let settings = Settings::default().pool(ECHO).raw(
        "[pools.health]\ninterval_ms = 100\ntimeout_ms = 500\nunhealthy_threshold = 2\nhealthy_threshold = 2",
    );
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let sick = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let well = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let sick_id = server.register(&sick, ECHO, 4).await;
    server.register(&well, ECHO, 4).await;
    sick.set_healthy(false);
    eventually(
        "the sick instance fails",
        Duration::from_secs(5),
        || async { status_of(&server, sick_id).await == AgentStatus::Failed },
    )
    .await;
    let before = sick.calls();
    run_sequentially(&server, 10).await;
    assert_eq!(sick.calls(), before, "a failed instance gets no work");
    sick.set_healthy(true);
    eventually("the instance recovers", Duration::from_secs(5), || async {
        status_of(&server, sick_id).await == AgentStatus::Idle
    })
    .await;
    let query = [("agent_id", sick_id.to_string())];
    // Events are written in batches a few times a second.
    eventually(
        "both transitions are events",
        Duration::from_secs(5),
        || async {
            let events = event_messages(&server, &query).await;
            events
                .iter()
                .any(|m| m.contains("→ failed: 2 health checks failed"))
                && events
                    .iter()
                    .any(|m| m.contains("failed → idle: 2 health checks passed"))
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_stops_heartbeating_has_its_attempt_retried_before_the_deadline() {
    let settings = Settings::default()
        .pool(ECHO)
        .set("scheduler.heartbeat_timeout_ms", 1500);
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let stuck = ScriptedAgent::start(Behaviour::Hang).unwrap();
    let stuck_id = server.register(&stuck, ECHO, 1).await;
    let stuck_beats = server.keep_alive(stuck_id);
    let submitted = server
        .submit(&SubmitTask {
            timeout_ms: Some(60_000),
            ..echo(3)
        })
        .await;
    assert!(stuck.wait_for_calls(1, Duration::from_secs(5)).await);
    let healthy = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let healthy_id = server.register(&healthy, ECHO, 1).await;
    let _healthy_beats = server.keep_alive(healthy_id);
    let started = Instant::now();
    drop(stuck_beats);
    let done = server.finish(submitted.id).await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "retried after {:?}, not at the 60 s deadline",
        started.elapsed()
    );
    assert!(
        done.attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("instance failed")),
        "{:?}",
        done.attempts
    );
    assert_eq!(healthy.attempts_for(done.id), [2]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_agent_loses_no_task_and_never_shares_an_attempt() {
    let settings = Settings::default()
        .pool(ECHO)
        .raw("[pools.outlier]\nconsecutive_failures = 2\nbase_ejection_s = 1\nmax_ejection_s = 2");
    let server = TestServer::start(Backend::Postgres, settings).await;
    let flapping = std::sync::Arc::new(ScriptedAgent::start(Behaviour::SUCCEED).unwrap());
    let steady = ScriptedAgent::start(Behaviour::Succeed {
        delay: Duration::from_millis(20),
    })
    .unwrap();
    server.register(&flapping, ECHO, 4).await;
    server.register(&steady, ECHO, 4).await;
    let flap = {
        let flapping = flapping.clone();
        tokio::spawn(async move {
            for i in 0.. {
                flapping.set_behaviour(if i % 2 == 0 {
                    Behaviour::Fail { status: 503 }
                } else {
                    Behaviour::SUCCEED
                });
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let mut ids: Vec<TaskId> = Vec::new();
    for _ in 0..120 {
        ids.push(server.submit(&echo(10)).await.id);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in &ids {
        let done = server.finish(*id).await;
        assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    }
    flap.abort();
    let mut seen = HashSet::new();
    for call in flapping.received().iter().chain(steady.received().iter()) {
        assert!(
            seen.insert((call.request.task_id, call.request.attempt)),
            "attempt {} of {} ran twice",
            call.request.attempt,
            call.request.task_id
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_and_events_are_listed() {
    let server = TestServer::start(Backend::Sqlite, Settings::default().pool(ECHO)).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let id = server.register(&agent, ECHO, 3).await;
    // An instance of a type no pool names gets an implicit static pool.
    let other = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    server.register(&other, "adhoc", 1).await;
    let pools = server.client.list_pools().await.unwrap().pools;
    let names: Vec<_> = pools
        .iter()
        .map(|p| (p.name.as_str(), p.configured))
        .collect();
    assert_eq!(names, [("adhoc", false), ("echo", true)]);
    let echo = &pools[1];
    assert_eq!(echo.provisioner, "static");
    assert_eq!(echo.strategy.as_str(), "p2c_ewma");
    assert_eq!(echo.capacity, 3);
    assert_eq!(echo.instances.get("idle"), Some(&1));

    let query = [("agent_type", ECHO.to_owned())];
    eventually(
        "the registration event is stored",
        Duration::from_secs(5),
        || async {
            event_messages(&server, &query)
                .await
                .iter()
                .any(|m| m == &format!("instance {id} of the platform registered with capacity 3"))
        },
    )
    .await;
    let first = server.client.list_events(&query).await.unwrap();
    let after = first.next_after.unwrap();
    let none = server
        .client
        .list_events(&[
            ("agent_type", ECHO.to_owned()),
            ("after", after.to_string()),
        ])
        .await
        .unwrap();
    assert!(none.events.is_empty(), "{none:?}");
    assert_eq!(none.next_after, Some(after), "the cursor stays put");

    let bad = server
        .http
        .get(server.url("/v1/events?limit=0"))
        .bearer_auth(support::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["field"], "limit", "{body}");
    let missing = server
        .http
        .get(server.url("/v1/pools/nope"))
        .bearer_auth(support::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    server.stop().await;
}
