//! Faults of agents and of the fleet (docs/design.md §4, §5): errors, garbage, hangs, refusals,
//! unreachable and dying instances, capacity, heartbeats and draining. Every task that was
//! accepted ends in a terminal state that says what happened.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::agent::AgentStatus;
use flotilla_core::id::TaskId;
use flotilla_core::task::{Task, TaskStatus};
use flotilla_core::wire::{Desired, Heartbeat, SubmitTask};
use flotilla_testkit::{Behaviour, ScriptedAgent};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Backend, Settings, TestServer, eventually, task};

on_both_backends!(
    an_agent_error_is_retried_and_the_task_succeeds_on_the_second_attempt,
    an_agent_refusal_fails_the_task_without_retry,
    an_agent_that_always_hangs_times_out_every_attempt,
    an_agent_answer_the_store_cannot_hold_does_not_stall_other_tasks,
);

const ECHO: &str = "echo";

async fn server(backend: Backend) -> TestServer {
    TestServer::start(backend, Settings::default().pool(ECHO)).await
}

fn echo_task(timeout_ms: Option<i64>, max_attempts: Option<i32>) -> SubmitTask {
    SubmitTask {
        timeout_ms,
        max_attempts,
        ..task(ECHO, json!({}))
    }
}

fn outcomes(task: &Task) -> Vec<&str> {
    task.attempts.iter().map(|a| a.outcome.as_str()).collect()
}

/// Waits up to `timeout` for the task to finish; `None` if it did not.
async fn finish_within(server: &TestServer, id: TaskId, timeout: Duration) -> Option<Task> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        let task = server
            .client
            .get_task(id, Some(Duration::from_millis(500)))
            .await
            .unwrap();
        if task.status.is_terminal() {
            return Some(task);
        }
    }
    None
}

async fn an_agent_error_is_retried_and_the_task_succeeds_on_the_second_attempt(backend: Backend) {
    let server = server(backend).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    agent.push_behaviours([Behaviour::Fail { status: 500 }]);
    let agent_id = server.register(&agent, ECHO, 1).await;
    let done = server
        .finish(server.submit(&echo_task(None, Some(3))).await.id)
        .await;
    assert_eq!(
        (done.status, done.attempt),
        (TaskStatus::Succeeded, 2),
        "{done:?}"
    );
    assert_eq!(outcomes(&done), ["failed", "succeeded"]);
    let failed = &done.attempts[0];
    assert_eq!(failed.agent_id, Some(agent_id));
    assert!(
        failed.error.as_deref().is_some_and(|e| e.contains("500")),
        "{failed:?}"
    );
    assert_eq!(agent.attempts_for(done.id), [1, 2]);
    assert_eq!(
        done.output.as_ref().map(|o| o["attempt"].clone()),
        Some(json!(2))
    );
    server.stop().await;
}

async fn an_agent_refusal_fails_the_task_without_retry(backend: Backend) {
    let server = server(backend).await;
    let agent = ScriptedAgent::start(Behaviour::Reject).unwrap();
    server.register(&agent, ECHO, 1).await;
    let done = server
        .finish(server.submit(&echo_task(None, Some(3))).await.id)
        .await;
    assert_eq!(
        (done.status, done.attempt),
        (TaskStatus::Failed, 1),
        "{done:?}"
    );
    assert_eq!(agent.calls_for(done.id), 1, "a refusal is not retried");
    assert_eq!(outcomes(&done), ["failed"]);
    assert!(
        done.error.as_deref().is_some_and(|e| e.contains("422")),
        "{:?}",
        done.error
    );
    // Other client errors of the agent are the task's fault too.
    for status in [400, 404, 413] {
        agent.push_behaviours([Behaviour::Fail { status }]);
        let done = server
            .finish(server.submit(&echo_task(None, Some(3))).await.id)
            .await;
        assert_eq!(
            (done.status, agent.calls_for(done.id)),
            (TaskStatus::Failed, 1),
            "HTTP {status}"
        );
    }
    server.stop().await;
}

async fn an_agent_that_always_hangs_times_out_every_attempt(backend: Backend) {
    let server = server(backend).await;
    let agent = ScriptedAgent::start(Behaviour::Hang).unwrap();
    server.register(&agent, ECHO, 2).await;
    let started = Instant::now();
    let done = server
        .finish(server.submit(&echo_task(Some(300), Some(2))).await.id)
        .await;
    assert_eq!(
        (done.status, done.attempt),
        (TaskStatus::TimedOut, 2),
        "{done:?}"
    );
    assert_eq!(agent.calls_for(done.id), 2);
    assert_eq!(outcomes(&done), ["failed", "timed_out"]);
    assert!(
        done.error
            .as_deref()
            .is_some_and(|e| e.contains("deadline")),
        "{:?}",
        done.error
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "each attempt stops at its deadline"
    );
    server.stop().await;
}

async fn an_agent_answer_the_store_cannot_hold_does_not_stall_other_tasks(backend: Backend) {
    let server = TestServer::start(backend, Settings::default().pool(ECHO).pool("odd")).await;
    // A JSON string with a NUL character: valid JSON, which not every database column takes.
    let odd = RawAgent::start(r#"{"output": {"text": "before\u0000after"}}"#).await;
    server.register_url(&odd.url, "odd", 1).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    server.register(&agent, ECHO, 1).await;

    let odd_task = server
        .submit(&SubmitTask {
            max_attempts: Some(1),
            ..task("odd", json!({}))
        })
        .await;
    eventually(
        "the odd agent is called",
        Duration::from_secs(5),
        || async { odd.calls() >= 1 },
    )
    .await;
    let normal = server.submit(&echo_task(None, None)).await;
    let normal = finish_within(&server, normal.id, Duration::from_secs(3)).await;
    assert_eq!(
        normal.map(|t| t.status),
        Some(TaskStatus::Succeeded),
        "a task after the odd answer still completes"
    );
    let odd_done = finish_within(&server, odd_task.id, Duration::from_secs(3)).await;
    let odd_done = odd_done.expect("the task with the odd answer reaches a terminal state");
    match odd_done.status {
        TaskStatus::Succeeded => assert_eq!(
            odd_done.output,
            Some(json!({"text": "before\u{0000}after"}))
        ),
        status => assert_eq!(status, TaskStatus::Failed, "{odd_done:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_to_another_instance() {
    // A backoff of 500-1000 ms leaves time to register the second instance before the retry.
    let settings = Settings::default()
        .pool(ECHO)
        .set("scheduler.retry_base_ms", 1000)
        .set("scheduler.retry_max_ms", 1000);
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let broken = ScriptedAgent::start(Behaviour::Fail { status: 500 }).unwrap();
    let healthy = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let broken_id = server.register(&broken, ECHO, 4).await;
    let submitted = server.submit(&echo_task(None, Some(3))).await;
    assert!(broken.wait_for_calls(1, Duration::from_secs(5)).await);
    let healthy_id = server.register(&healthy, ECHO, 4).await;
    let done = server.finish(submitted.id).await;
    assert_eq!(
        (done.status, done.attempt),
        (TaskStatus::Succeeded, 2),
        "{done:?}"
    );
    assert_eq!(broken.attempts_for(done.id), [1]);
    assert_eq!(
        healthy.attempts_for(done.id),
        [2],
        "the retry went to the other instance"
    );
    let agents: Vec<_> = done.attempts.iter().map(|a| a.agent_id).collect();
    assert_eq!(agents, [Some(broken_id), Some(healthy_id)]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_answer_fails_the_attempt_and_is_retried() {
    let server = server(Backend::Sqlite).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    agent.push_behaviours([Behaviour::Garbage]);
    server.register(&agent, ECHO, 1).await;
    let done = server
        .finish(server.submit(&echo_task(None, Some(3))).await.id)
        .await;
    assert_eq!(
        (done.status, done.attempt),
        (TaskStatus::Succeeded, 2),
        "{done:?}"
    );
    assert_eq!(outcomes(&done), ["failed", "succeeded"]);
    assert!(
        done.attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("invalid")),
        "{:?}",
        done.attempts[0]
    );

    // Garbage every time: the task fails once its attempts are spent.
    agent.set_behaviour(Behaviour::Garbage);
    let done = server
        .finish(server.submit(&echo_task(None, Some(2))).await.id)
        .await;
    assert_eq!(
        (done.status, agent.calls_for(done.id)),
        (TaskStatus::Failed, 2),
        "{done:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_attempt_times_out_and_the_retry_can_succeed() {
    let server = server(Backend::Sqlite).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    agent.push_behaviours([Behaviour::Hang]);
    server.register(&agent, ECHO, 2).await;
    let done = server
        .finish(server.submit(&echo_task(Some(300), Some(3))).await.id)
        .await;
    assert_eq!(
        (done.status, done.attempt),
        (TaskStatus::Succeeded, 2),
        "{done:?}"
    );
    assert_eq!(outcomes(&done), ["failed", "succeeded"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_unavailable_statuses_are_retried() {
    let server = server(Backend::Sqlite).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    server.register(&agent, ECHO, 1).await;
    for status in [408, 429, 502, 503] {
        agent.push_behaviours([Behaviour::Fail { status }]);
        let done = server
            .finish(server.submit(&echo_task(None, Some(3))).await.id)
            .await;
        assert_eq!(
            (done.status, done.attempt),
            (TaskStatus::Succeeded, 2),
            "HTTP {status}: {done:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_is_retried_then_the_task_fails_naming_the_connection() {
    let server = server(Backend::Sqlite).await;
    let closed = flotilla_testkit::free_port().unwrap();
    server
        .register_url(&format!("http://127.0.0.1:{closed}"), ECHO, 1)
        .await;
    let done = server
        .finish(server.submit(&echo_task(None, Some(2))).await.id)
        .await;
    assert_eq!(
        (done.status, done.attempt),
        (TaskStatus::Failed, 2),
        "{done:?}"
    );
    assert_eq!(outcomes(&done), ["failed", "failed"]);
    let error = done.error.clone().unwrap_or_default().to_lowercase();
    assert!(
        error.contains("unreachable") && error.contains("connect"),
        "the error names the connection: {error}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_dies_mid_task_has_its_task_retried_elsewhere() {
    let server = server(Backend::Sqlite).await;
    let dying = ScriptedAgent::start(Behaviour::Hang).unwrap();
    let healthy = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    server.register(&dying, ECHO, 1).await;
    let submitted = server.submit(&echo_task(Some(10_000), Some(3))).await;
    assert!(dying.wait_for_calls(1, Duration::from_secs(5)).await);
    let healthy_id = server.register(&healthy, ECHO, 1).await;
    let started = Instant::now();
    dying.stop();
    let done = server.finish(submitted.id).await;
    assert_eq!(
        (done.status, done.attempt),
        (TaskStatus::Succeeded, 2),
        "{done:?}"
    );
    assert_eq!(done.agent_id, Some(healthy_id));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the dropped connection fails the attempt before its deadline"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_never_runs_more_tasks_than_its_capacity() {
    let server = server(Backend::Sqlite).await;
    let agent = Arc::new(
        ScriptedAgent::start(Behaviour::Succeed {
            delay: Duration::from_millis(150),
        })
        .unwrap(),
    );
    server.register(&agent, ECHO, 2).await;
    let peak = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (agent, peak, done) = (agent.clone(), peak.clone(), done.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(agent.in_flight(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let bodies: Vec<SubmitTask> = (0..10).map(|i| task(ECHO, json!({"i": i}))).collect();
    let submissions = bodies.iter().map(|body| server.client.submit_task(body));
    let ids: Vec<TaskId> = futures::future::join_all(submissions)
        .await
        .into_iter()
        .map(|t| t.unwrap().id)
        .collect();
    for id in ids {
        assert_eq!(server.finish(id).await.status, TaskStatus::Succeeded);
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= 2,
        "the instance had {peak} calls in flight with capacity 2"
    );
    assert_eq!(peak, 2, "the capacity is used");
    assert_eq!(agent.calls(), 10);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_heartbeats_stop_is_failed_and_gets_no_work_until_it_heartbeats() {
    let settings = Settings::default()
        .pool(ECHO)
        .set("scheduler.heartbeat_timeout_ms", 1500);
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let id = server.register(&agent, ECHO, 2).await;
    assert_eq!(
        server.client.get_agent(id).await.unwrap().status,
        AgentStatus::Idle
    );
    eventually(
        "the silent instance is failed",
        Duration::from_secs(5),
        || async { server.client.get_agent(id).await.unwrap().status == AgentStatus::Failed },
    )
    .await;
    let listed = server.client.list_agents().await.unwrap();
    assert_eq!(
        listed
            .agents
            .iter()
            .map(|a| (a.id, a.status))
            .collect::<Vec<_>>(),
        [(id, AgentStatus::Failed)]
    );

    let submitted = server.submit(&echo_task(None, None)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(agent.calls(), 0, "a failed instance gets no work");
    assert_eq!(server.status(submitted.id).await, TaskStatus::Queued);

    let ack = server
        .client
        .heartbeat(
            id,
            &Heartbeat {
                load: 0,
                status: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(ack.desired, Desired::Run);
    let _alive = server.keep_alive(id);
    let done = server.finish(submitted.id).await;
    assert_eq!(
        (done.status, done.agent_id),
        (TaskStatus::Succeeded, Some(id))
    );
    eventually(
        "the instance is idle again",
        Duration::from_secs(5),
        || async { server.client.get_agent(id).await.unwrap().status == AgentStatus::Idle },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_told_to_heartbeat_more_often_than_the_timeout() {
    // The fast settings of these tests: heartbeat every 200 ms, failed after 1 s of silence.
    // Either the configuration refuses the combination, or agents are told an interval they can
    // keep without being failed between two heartbeats.
    let settings = Settings::default()
        .pool(ECHO)
        .set("scheduler.heartbeat_timeout_ms", 1000);
    if let Err(refused) = settings.try_build() {
        assert!(refused.to_string().contains("heartbeat"), "{refused}");
        return;
    }
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let body = flotilla_core::wire::RegisterAgent {
        agent_type: ECHO.to_owned(),
        url: "http://127.0.0.1:9".to_owned(),
        capacity: 1,
        weight: None,
        metadata: None,
        version: None,
    };
    let registered = server.client.register_agent(&body).await.unwrap();
    let told = Duration::from_secs(registered.heartbeat_interval_s);
    let timeout = server.config.scheduler.heartbeat_timeout;
    assert!(
        told < timeout,
        "agents are told to heartbeat every {told:?} but are failed after {timeout:?} of silence"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistered_instance_drains_then_disappears_and_gets_no_new_work() {
    let server = server(Backend::Sqlite).await;
    let leaving = ScriptedAgent::start(Behaviour::Succeed {
        delay: Duration::from_millis(800),
    })
    .unwrap();
    let id = server.register(&leaving, ECHO, 4).await;
    let running = server.submit(&echo_task(None, None)).await;
    assert!(leaving.wait_for_calls(1, Duration::from_secs(5)).await);

    assert_eq!(
        server.deregister(id).await,
        (202, json!({"status": "draining"}))
    );
    assert_eq!(
        server.client.get_agent(id).await.unwrap().status,
        AgentStatus::Draining
    );
    let ack = server
        .client
        .heartbeat(
            id,
            &Heartbeat {
                load: 1,
                status: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        ack.desired,
        Desired::Drain,
        "a draining instance is told to drain"
    );

    // Work submitted meanwhile waits rather than going to the draining instance.
    let waiting = server.submit(&echo_task(None, None)).await;
    let finished = server.finish(running.id).await;
    assert_eq!(
        finished.status,
        TaskStatus::Succeeded,
        "in-flight work finishes"
    );
    eventually(
        "the drained instance is removed",
        Duration::from_secs(5),
        || async {
            server
                .client
                .get_agent(id)
                .await
                .is_err_and(|e| e.status() == Some(404))
        },
    )
    .await;
    assert!(server.client.list_agents().await.unwrap().agents.is_empty());
    assert_eq!(server.status(waiting.id).await, TaskStatus::Queued);
    assert_eq!(
        leaving.calls(),
        1,
        "no new work went to the draining instance"
    );

    let arriving = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let arriving_id = server.register(&arriving, ECHO, 1).await;
    let done = server.finish(waiting.id).await;
    assert_eq!(
        (done.status, done.agent_id),
        (TaskStatus::Succeeded, Some(arriving_id))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_is_removed_at_once_on_deregistration() {
    let server = server(Backend::Sqlite).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let id = server.register(&agent, ECHO, 1).await;
    assert_eq!(
        server.deregister(id).await,
        (200, json!({"status": "deregistered"}))
    );
    assert_eq!(
        server.client.get_agent(id).await.unwrap_err().status(),
        Some(404)
    );
    assert_eq!(
        server.client.deregister(id).await.unwrap_err().status(),
        Some(404)
    );
    let heartbeat = server
        .client
        .heartbeat(
            id,
            &Heartbeat {
                load: 0,
                status: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        heartbeat.status(),
        Some(404),
        "a removed instance must register again"
    );
    let submitted = server.submit(&echo_task(None, None)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (agent.calls(), server.status(submitted.id).await),
        (0, TaskStatus::Queued)
    );
    server.stop().await;
}

/// An agent that answers every `/execute` with the same 200 body.
struct RawAgent {
    url: String,
    calls: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl RawAgent {
    async fn start(body: &'static str) -> RawAgent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let execute = move || {
            counter.fetch_add(1, Ordering::Relaxed);
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
            }
        };
        let router = axum::Router::new().route("/execute", axum::routing::post(execute));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        RawAgent { url, calls, server }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Drop for RawAgent {
    fn drop(&mut self) {
        self.server.abort();
    }
}
