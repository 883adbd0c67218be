//! The scripted agent does what it is told, counts what it gets and drops connections when it
//! stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use flotilla_core::id::TaskId;
use flotilla_core::wire::{AgentHealth, ErrorBody, ExecuteResponse};
use flotilla_testkit::{Behaviour, ScriptedAgent};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn request(task_id: TaskId, attempt: i32) -> Value {
    json!({
        "task_id": task_id,
        "attempt": attempt,
        "agent_type": "code_generator",
        "input": {"n": attempt},
        "deadline": chrono::Utc::now() + chrono::Duration::seconds(30),
    })
}

async fn post(agent: &ScriptedAgent, body: &Value) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .post(format!("{}/execute", agent.url()))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(body)
        .send()
        .await
}

#[tokio::test]
async fn queued_behaviours_go_first_then_the_default() {
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    agent.push_behaviours([
        Behaviour::Fail { status: 503 },
        Behaviour::Reject,
        Behaviour::Garbage,
    ]);
    let task = TaskId::from_uuid(Uuid::now_v7());

    let r = post(&agent, &request(task, 1)).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<ErrorBody>().await.unwrap().error.code,
        "scripted_failure"
    );
    assert_eq!(post(&agent, &request(task, 2)).await.unwrap().status(), 422);
    let garbage = post(&agent, &request(task, 3)).await.unwrap();
    assert_eq!(garbage.status(), 200);
    assert!(serde_json::from_str::<Value>(&garbage.text().await.unwrap()).is_err());
    let ok = post(&agent, &request(task, 4)).await.unwrap();
    assert_eq!(ok.status(), 200);
    let answer: ExecuteResponse = ok.json().await.unwrap();
    assert_eq!(answer.output["attempt"], 4);

    agent.set_behaviour(Behaviour::Fail { status: 500 });
    assert_eq!(post(&agent, &request(task, 5)).await.unwrap().status(), 500);

    assert_eq!(agent.calls(), 5);
    assert_eq!(agent.calls_for(task), 5);
    assert_eq!(agent.calls_for(TaskId::from_uuid(Uuid::now_v7())), 0);
    assert_eq!(agent.attempts_for(task), vec![1, 2, 3, 4, 5]);
    let received = agent.received();
    assert_eq!(received[1].behaviour, Behaviour::Reject);
    assert!(
        received[0]
            .headers
            .iter()
            .any(|(k, v)| k == "traceparent" && v.starts_with("00-"))
    );
    assert_eq!(agent.requests()[0].input, json!({"n": 1}));

    // A body that is not an execute request is counted but not recorded.
    let bad = reqwest::Client::new()
        .post(format!("{}/execute", agent.url()))
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(agent.calls(), 6);
    assert_eq!(agent.requests().len(), 5);
}

#[tokio::test]
async fn delays_and_health() {
    let agent = ScriptedAgent::start(Behaviour::Succeed {
        delay: Duration::from_millis(400),
    })
    .unwrap();
    agent.set_capacity(7);
    let task = TaskId::from_uuid(Uuid::now_v7());
    let url = agent.url();
    let started = Instant::now();
    let call = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/execute"))
            .json(&request(task, 1))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(agent.wait_for_calls(1, Duration::from_secs(5)).await);
    let health: AgentHealth = reqwest::get(format!("{}/health", agent.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((health.load, health.capacity), (1, 7));
    assert_eq!(call.await.unwrap(), 200);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(agent.in_flight(), 0);

    agent.set_healthy(false);
    assert_eq!(
        reqwest::get(format!("{}/health", agent.url()))
            .await
            .unwrap()
            .status(),
        503
    );
}

#[tokio::test]
async fn stopping_drops_hanging_calls_and_refuses_new_ones() {
    let agent = ScriptedAgent::start(Behaviour::Hang).unwrap();
    let task = TaskId::from_uuid(Uuid::now_v7());
    let url = agent.url();
    let hanging = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/execute"))
            .json(&request(task, 1))
            .send()
            .await
    });
    assert!(agent.wait_for_calls(1, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!hanging.is_finished());
    assert_eq!(agent.in_flight(), 1);

    agent.stop();
    let result = tokio::time::timeout(Duration::from_secs(5), hanging)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_err(), "the connection was dropped: {result:?}");
    assert!(
        post(&agent, &request(task, 2)).await.is_err(),
        "nothing listens any more"
    );
    agent.stop();
}

#[tokio::test]
async fn dropping_stops_the_server() {
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let url = agent.url();
    drop(agent);
    assert!(reqwest::get(format!("{url}/health")).await.is_err());
}

#[test]
fn postgres_url_has_a_default() {
    // The variable may be set on a developer machine; either way a URL comes back.
    assert!(flotilla_testkit::postgres_url().starts_with("postgres"));
}
