//! The agent runtime against a fake control plane: registration, heartbeats, the `/execute`
//! contract, outages and the drain sequence.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use flotilla_agent::{AgentRuntimeError, Latency, RunningAgent, RuntimeConfig, SimulatedAgent};
use flotilla_core::agent::AgentStatus;
use flotilla_core::id::TaskId;
use flotilla_core::wire::{AgentHealth, ErrorBody, ExecuteResponse, ReportedStatus};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{Event, FakeControlPlane, KEY, sign_now};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TYPE: &str = "code_generator";
const WAIT: Duration = Duration::from_secs(10);

fn config(cp: &FakeControlPlane, capacity: u32) -> RuntimeConfig {
    RuntimeConfig {
        agent_type: TYPE.into(),
        capacity,
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise_url: None,
        control_plane: cp.url.clone(),
        key: KEY.into(),
        weight: Some(2),
        drain_timeout: Duration::from_secs(10),
        metadata: Some(json!({"zone": "test"})),
        version: Some("1.2.3".into()),
        security: flotilla_agent::AgentSecurity::default(),
    }
}

async fn start_agent(cp: &FakeControlPlane, capacity: u32) -> (RunningAgent, CancellationToken) {
    let shutdown = CancellationToken::new();
    let agent = SimulatedAgent::new(TYPE, Latency::ZERO, 0.0).unwrap();
    let running = flotilla_agent::start(agent, config(cp, capacity), shutdown.clone())
        .await
        .unwrap();
    (running, shutdown)
}

fn task(input: Value) -> Value {
    task_with_deadline(input, chrono::Duration::seconds(30))
}

fn task_with_deadline(input: Value, deadline_in: chrono::Duration) -> Value {
    json!({
        "task_id": TaskId::from_uuid(Uuid::now_v7()),
        "attempt": 1,
        "agent_type": TYPE,
        "input": input,
        "deadline": chrono::Utc::now() + deadline_in,
    })
}

/// A signed `POST /execute`, as the control plane sends it.
async fn execute(url: &str, body: &Value) -> reqwest::Response {
    execute_raw(url, serde_json::to_vec(body).unwrap()).await
}

async fn execute_raw(url: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/execute"))
        .header("content-type", "application/json")
        .header("x-flotilla-signature", sign_now(&body))
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn health(url: &str) -> AgentHealth {
    reqwest::get(format!("{url}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn error_code(response: reqwest::Response) -> String {
    response.json::<ErrorBody>().await.unwrap().error.code
}

#[tokio::test]
async fn registers_heartbeats_with_load_and_executes() {
    let cp = FakeControlPlane::start().await;
    let (running, shutdown) = start_agent(&cp, 3).await;
    let url = format!("http://{}", running.addr);
    assert_eq!(running.url, url);

    let registrations = cp.registrations();
    assert_eq!(registrations.len(), 1);
    let (body, id) = &registrations[0];
    assert_eq!(*id, running.id);
    assert_eq!(body.agent_type, TYPE);
    assert_eq!(body.url, url);
    assert_eq!(body.capacity, 3);
    assert_eq!(body.weight, Some(2));
    assert_eq!(body.version.as_deref(), Some("1.2.3"));

    // A slow task is in flight while the next heartbeat goes out.
    let slow = tokio::spawn({
        let url = url.clone();
        async move {
            execute(&url, &task(json!({"simulate": {"duration_ms": 1800}})))
                .await
                .status()
        }
    });
    cp.wait_until("a heartbeat with load 1", WAIT, |cp| {
        cp.heartbeats()
            .iter()
            .any(|(id, beat, _)| *id == running.id && beat.load == 1 && beat.status.is_none())
    })
    .await;
    assert_eq!(
        health(&url).await,
        AgentHealth {
            status: AgentStatus::Busy,
            load: 1,
            capacity: 3
        }
    );
    assert_eq!(slow.await.unwrap(), 200);

    let response = execute(
        &url,
        &task(json!({"language": "rust", "prompt": "a parser"})),
    )
    .await;
    assert_eq!(response.status(), 200);
    let answer: ExecuteResponse = response.json().await.unwrap();
    assert_eq!(answer.output["simulated"], json!(true));
    assert_eq!(answer.output["language"], "rust");
    assert!(
        answer.output["summary"]
            .as_str()
            .unwrap()
            .contains("(simulated)")
    );
    assert_eq!(answer.usage, None);

    cp.wait_until("a heartbeat with load 0", WAIT, |cp| {
        cp.heartbeats()
            .last()
            .is_some_and(|(_, beat, _)| beat.load == 0)
    })
    .await;
    assert_eq!(cp.bad_auth(), 0);

    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn execute_contract_errors() {
    let cp = FakeControlPlane::start().await;
    let (running, shutdown) = start_agent(&cp, 1).await;
    let url = format!("http://{}", running.addr);

    // Not JSON, and JSON of the wrong shape: 400 with a JSON error body.
    let response = execute_raw(&url, b"{not json".to_vec()).await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "invalid_request");
    let mut missing = task(json!({}));
    missing["attempt"] = json!("one");
    let response = execute(&url, &missing).await;
    assert_eq!(response.status(), 400);
    let body = response.json::<ErrorBody>().await.unwrap();
    assert_eq!(body.error.field.as_deref(), Some("attempt"));

    // The one slot is busy: 429 with Retry-After.
    let slow = tokio::spawn({
        let url = url.clone();
        async move {
            execute(&url, &task(json!({"simulate": {"duration_ms": 800}})))
                .await
                .status()
        }
    });
    let started = Instant::now();
    while health(&url).await.load == 0 {
        assert!(started.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = execute(&url, &task(json!({}))).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response).await, "at_capacity");
    assert_eq!(slow.await.unwrap(), 200);

    // Rejection, transient failure and a passed deadline.
    let response = execute(&url, &task(json!({"simulate": {"reject": true}}))).await;
    assert_eq!(response.status(), 422);
    let response = execute(&url, &task(json!({"simulate": {"fail": true}}))).await;
    assert_eq!(response.status(), 500);
    assert_eq!(error_code(response).await, "task_failed");
    let late = task_with_deadline(
        json!({"simulate": {"duration_ms": 5000}}),
        chrono::Duration::milliseconds(300),
    );
    let started = Instant::now();
    let response = execute(&url, &late).await;
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    let past = task_with_deadline(json!({}), chrono::Duration::seconds(-1));
    assert_eq!(execute(&url, &past).await.status(), 504);

    // A task of another type is rejected, not retried elsewhere forever.
    let mut other = task(json!({}));
    other["agent_type"] = json!("security_scanner");
    assert_eq!(execute(&url, &other).await.status(), 422);

    assert_eq!(health(&url).await.load, 0, "every slot was given back");
    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn shutdown_drains_in_flight_work_before_deregistering() {
    let cp = FakeControlPlane::start().await;
    let (running, shutdown) = start_agent(&cp, 2).await;
    let url = format!("http://{}", running.addr);
    let id = running.id;

    let sent = Instant::now();
    let slow = tokio::spawn({
        let url = url.clone();
        async move {
            let response = execute(&url, &task(json!({"simulate": {"duration_ms": 1500}}))).await;
            let status = response.status();
            let body: ExecuteResponse = response.json().await.unwrap();
            (status, body)
        }
    });
    while health(&url).await.load == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();

    cp.wait_until("a draining heartbeat", WAIT, |cp| {
        cp.heartbeats()
            .iter()
            .any(|(_, beat, _)| beat.status == Some(ReportedStatus::Draining))
    })
    .await;
    // New work is refused while the slow task still runs.
    let refused = execute(&url, &task(json!({}))).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(error_code(refused).await, "draining");
    assert_eq!(health(&url).await.status, AgentStatus::Draining);
    assert!(
        cp.deletes().is_empty(),
        "no DELETE while a task is in flight"
    );

    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.output["simulated"], json!(true));
    running.wait().await.unwrap();

    let deletes = cp.deletes();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].0, id);
    // The task's work ends 1.5 s after it was sent at the earliest; the DELETE must not precede
    // it. (Its answer may still be on the wire then: the server finishes sending it before it
    // stops, which the 200 above shows.)
    assert!(
        deletes[0].1 >= sent + Duration::from_millis(1500),
        "DELETE came before the in-flight task finished"
    );
    let events = cp.events();
    let draining_at = events
        .iter()
        .position(|e| matches!(e, Event::Heartbeat { beat, .. } if beat.status == Some(ReportedStatus::Draining)))
        .unwrap();
    let delete_at = events
        .iter()
        .position(|e| matches!(e, Event::Delete { .. }))
        .unwrap();
    assert!(draining_at < delete_at);
    assert_eq!(delete_at, events.len() - 1, "nothing after the DELETE");

    // The server is gone.
    assert!(reqwest::get(format!("{url}/health")).await.is_err());
}

#[tokio::test]
async fn drain_timeout_bounds_the_wait() {
    let cp = FakeControlPlane::start().await;
    let shutdown = CancellationToken::new();
    let agent = SimulatedAgent::new(TYPE, Latency::ZERO, 0.0).unwrap();
    let mut config = config(&cp, 1);
    config.drain_timeout = Duration::from_millis(300);
    let running = flotilla_agent::start(agent, config, shutdown.clone())
        .await
        .unwrap();
    let url = format!("http://{}", running.addr);
    let _stuck = tokio::spawn({
        let url = url.clone();
        async move { execute(&url, &task(json!({"simulate": {"duration_ms": 20_000}}))).await }
    });
    while health(&url).await.load == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    shutdown.cancel();
    running.wait().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(cp.deletes().len(), 1);
}

#[tokio::test]
async fn control_plane_drain_request_drains_and_deregisters() {
    let cp = FakeControlPlane::start().await;
    let (running, _shutdown) = start_agent(&cp, 2).await;
    cp.set_drain(true);
    tokio::time::timeout(WAIT, running.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.deletes().len(), 1);
}

#[tokio::test]
async fn heartbeats_resume_on_the_same_id_after_an_outage() {
    let cp = FakeControlPlane::start().await;
    let (running, shutdown) = start_agent(&cp, 2).await;
    cp.wait_until("a first heartbeat", WAIT, |cp| !cp.heartbeats().is_empty())
        .await;

    cp.set_down(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = cp.heartbeats().len();
    cp.set_down(false);
    cp.wait_until("heartbeats after the outage", WAIT, |cp| {
        cp.heartbeats().len() > before
    })
    .await;

    assert_eq!(cp.registrations().len(), 1, "no new registration");
    assert!(cp.heartbeats().iter().all(|(id, _, _)| *id == running.id));
    assert_eq!(running.current_id(), running.id);
    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn forgotten_instances_register_again() {
    let cp = FakeControlPlane::start().await;
    let (running, shutdown) = start_agent(&cp, 2).await;
    cp.forget_all();
    cp.wait_until("a second registration", WAIT, |cp| {
        cp.registrations().len() == 2
    })
    .await;
    let new_id = cp.registrations()[1].1;
    assert_ne!(new_id, running.id);
    cp.wait_until("a heartbeat under the new id", WAIT, |cp| {
        cp.heartbeats().iter().any(|(id, _, _)| *id == new_id)
    })
    .await;
    assert_eq!(running.current_id(), new_id);
    shutdown.cancel();
    running.wait().await.unwrap();
    assert_eq!(cp.deletes().last().map(|d| d.0), Some(new_id));
}

#[tokio::test]
async fn registration_waits_for_the_control_plane() {
    let cp = FakeControlPlane::start().await;
    cp.set_down(true);
    let shutdown = CancellationToken::new();
    let agent = SimulatedAgent::new(TYPE, Latency::ZERO, 0.0).unwrap();
    let starting = tokio::spawn(flotilla_agent::start(
        agent,
        config(&cp, 1),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!starting.is_finished());
    cp.set_down(false);
    let running = tokio::time::timeout(WAIT, starting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(cp.registrations()[0].1, running.id);
    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn shutdown_before_registration_is_clean() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cp = FakeControlPlane::unreachable(format!("http://127.0.0.1:{port}"));
    let shutdown = CancellationToken::new();
    let agent = SimulatedAgent::new(TYPE, Latency::ZERO, 0.0).unwrap();
    let run = tokio::spawn(flotilla_agent::run(agent, config(&cp, 1), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn refused_registration_is_an_error() {
    let cp = FakeControlPlane::start().await;
    cp.refuse_registration(axum::http::StatusCode::UNPROCESSABLE_ENTITY);
    let agent = SimulatedAgent::new(TYPE, Latency::ZERO, 0.0).unwrap();
    let result = flotilla_agent::start(agent, config(&cp, 1), CancellationToken::new()).await;
    match result {
        Err(AgentRuntimeError::Registration(e)) => assert_eq!(e.status(), Some(422)),
        other => panic!("expected a registration error, got {other:?}"),
    }

    let agent = SimulatedAgent::new(TYPE, Latency::ZERO, 0.0).unwrap();
    let mut zero = config(&cp, 1);
    zero.capacity = 0;
    assert!(matches!(
        flotilla_agent::start(agent, zero, CancellationToken::new()).await,
        Err(AgentRuntimeError::Config(_))
    ));
}
