//! A real running SDK agent refuses `/execute` calls that are unsigned, wrongly signed, stale,
//! from the future or replayed (401 with a JSON body naming the reason), and never runs them;
//! a correctly signed call runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use flotilla_agent::{AgentSecurity, Latency, RunningAgent, RuntimeConfig, SimulatedAgent};
use flotilla_core::id::TaskId;
use flotilla_core::signature;
use flotilla_core::wire::{ErrorBody, ExecuteResponse};
use serde_json::json;
use std::time::Duration;
use support::{FakeControlPlane, KEY, SIGNING_SECRET, sign_now};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TYPE: &str = "echo";

async fn start_agent(
    cp: &FakeControlPlane,
    max_skew: Duration,
) -> (RunningAgent, CancellationToken) {
    let config = RuntimeConfig {
        agent_type: TYPE.into(),
        capacity: 4,
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise_url: None,
        control_plane: cp.url.clone(),
        key: KEY.into(),
        weight: None,
        drain_timeout: Duration::from_secs(1),
        metadata: None,
        version: None,
        security: AgentSecurity {
            max_signature_skew: max_skew,
            ..AgentSecurity::default()
        },
    };
    let shutdown = CancellationToken::new();
    let agent = SimulatedAgent::new(TYPE, Latency::ZERO, 0.0).unwrap();
    let running = flotilla_agent::start(agent, config, shutdown.clone())
        .await
        .unwrap();
    (running, shutdown)
}

fn body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "task_id": TaskId::from_uuid(Uuid::now_v7()),
        "attempt": 1,
        "agent_type": TYPE,
        "input": {"prompt": "hello"},
        "deadline": chrono::Utc::now() + chrono::Duration::seconds(30),
    }))
    .unwrap()
}

async fn post(url: &str, body: &[u8], signature: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{url}/execute"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header(signature::HEADER, signature);
    }
    request.send().await.unwrap()
}

/// Asserts a 401 with the given error code.
async fn refused(response: reqwest::Response, code: &str) {
    assert_eq!(response.status(), 401, "expected 401 {code}");
    let body: ErrorBody = response.json().await.unwrap();
    assert_eq!(body.error.code, code, "{}", body.error.message);
    assert!(!body.error.message.is_empty());
}

#[tokio::test]
async fn unsigned_forged_stale_future_and_replayed_requests_get_401() {
    let cp = FakeControlPlane::start().await;
    let (running, shutdown) = start_agent(&cp, signature::DEFAULT_MAX_SKEW).await;
    let url = format!("http://{}", running.addr);
    let secret = SIGNING_SECRET.as_bytes();
    let now = chrono::Utc::now().timestamp();

    let b = body();
    refused(post(&url, &b, None).await, "signature_missing").await;
    refused(post(&url, &b, Some("v1=abc")).await, "signature_malformed").await;
    let forged = signature::sign_at(b"not the secret", &b, now);
    refused(post(&url, &b, Some(&forged)).await, "signature_mismatch").await;
    // A good signature of another body: the body was altered in transit.
    let other = signature::sign_at(secret, &body(), now);
    refused(post(&url, &b, Some(&other)).await, "signature_mismatch").await;
    let stale = signature::sign_at(secret, &b, now - 301);
    refused(post(&url, &b, Some(&stale)).await, "signature_stale").await;
    let future = signature::sign_at(secret, &b, now + 301);
    refused(post(&url, &b, Some(&future)).await, "signature_from_future").await;

    // Signed correctly: runs once; the same signed request again is a replay.
    let signed = sign_now(&b);
    let response = post(&url, &b, Some(&signed)).await;
    assert_eq!(response.status(), 200);
    let answer: ExecuteResponse = response.json().await.unwrap();
    assert_eq!(answer.output["echo"]["prompt"], "hello");
    refused(post(&url, &b, Some(&signed)).await, "signature_replayed").await;
    // A fresh signature of a fresh body runs.
    let b2 = body();
    assert_eq!(post(&url, &b2, Some(&sign_now(&b2))).await.status(), 200);

    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn the_skew_is_configurable() {
    let cp = FakeControlPlane::start().await;
    let (running, shutdown) = start_agent(&cp, Duration::from_secs(10)).await;
    let url = format!("http://{}", running.addr);
    let now = chrono::Utc::now().timestamp();
    let b = body();
    let late = signature::sign_at(SIGNING_SECRET.as_bytes(), &b, now - 60);
    refused(post(&url, &b, Some(&late)).await, "signature_stale").await;
    let b = body();
    let recent = signature::sign_at(SIGNING_SECRET.as_bytes(), &b, now - 5);
    assert_eq!(post(&url, &b, Some(&recent)).await.status(), 200);
    shutdown.cancel();
    running.wait().await.unwrap();
}
