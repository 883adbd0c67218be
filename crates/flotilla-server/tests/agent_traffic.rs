//! Control plane → agent traffic (docs/design.md §6): every `/execute` is signed with the instance's
//! secret over the exact bytes sent, and carries a per-task model-gateway token that
//! authenticates as that task only (403 everywhere but the model gateway), and not once altered
//! or past the attempt's deadline (401).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::signature::{self, SignatureError};
use flotilla_core::task::TaskStatus;
use flotilla_core::wire::RegisterAgent;
use flotilla_testkit::{Behaviour, ScriptedAgent};
use serde_json::json;
use support::{Backend, Settings, TestServer, task};

const TYPE: &str = "signed";

/// Registers `agent` and returns the signing secret the registration answered with.
async fn register(server: &TestServer, agent: &ScriptedAgent) -> String {
    let registered = server
        .client
        .register_agent(&RegisterAgent {
            agent_type: TYPE.to_owned(),
            url: agent.url(),
            capacity: 4,
            weight: None,
            metadata: None,
            version: None,
        })
        .await
        .unwrap();
    registered.signing_secret
}

async fn execute_requests_are_signed(backend: Backend) {
    let server = TestServer::start(backend, Settings::default().pool(TYPE)).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let secret = register(&server, &agent).await;
    // Two attempts of one task (the first fails) and a second task: each call is signed anew.
    agent.push_behaviours([Behaviour::Fail { status: 503 }]);
    let first = server.submit(&task(TYPE, json!({"n": 1}))).await;
    let second = server.submit(&task(TYPE, json!({"n": 2}))).await;
    assert_eq!(server.finish(first.id).await.status, TaskStatus::Succeeded);
    assert_eq!(server.finish(second.id).await.status, TaskStatus::Succeeded);
    let calls = agent.received();
    assert_eq!(calls.len(), 3);
    let mut macs = Vec::new();
    for call in &calls {
        let verified = call.verify_signature(&secret).unwrap();
        let age = call.received_at.timestamp() - verified.t;
        assert!((0..=2).contains(&age), "signed {age} s before it arrived");
        macs.push(verified.mac);
        // Another instance's secret does not verify it.
        assert_eq!(
            call.verify_signature("another instance's secret"),
            Err(SignatureError::Mismatch)
        );
    }
    macs.dedup();
    assert_eq!(macs.len(), 3, "every call has its own signature");
    assert!(
        calls[0]
            .header(signature::HEADER)
            .unwrap()
            .starts_with("t=")
    );
    server.stop().await;
}

/// `GET`/`POST` on an API path with a bearer token: the status and the error code.
async fn call(server: &TestServer, method: &str, path: &str, token: &str) -> (u16, String) {
    let request = match method {
        "POST" => server.http.post(server.url(path)).json(&json!({
            "type": TYPE, "url": "http://127.0.0.1:9", "capacity": 1
        })),
        _ => server.http.get(server.url(path)),
    };
    let response = request.bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn task_tokens_call_models_only(backend: Backend) {
    let server = TestServer::start(backend, Settings::default().pool(TYPE)).await;
    // The agent holds the attempt until its deadline: a token is honoured only while its
    // attempt runs (tests/task_tokens.rs).
    let agent = ScriptedAgent::start(Behaviour::Hang).unwrap();
    register(&server, &agent).await;
    let mut submission = task(TYPE, json!({"n": 1}));
    submission.timeout_ms = Some(1500);
    submission.max_attempts = Some(1);
    let submitted = server.submit(&submission).await;
    assert!(
        agent
            .wait_for_calls(1, std::time::Duration::from_secs(5))
            .await
    );
    let request = agent.requests().pop().unwrap();
    let gateway = request
        .model_gateway
        .clone()
        .expect("the envelope has a model gateway");
    assert_eq!(gateway.base_url, server.url("/v1"));
    assert!(gateway.token.starts_with("ftk_"));
    assert!(
        !format!("{request:?}").contains(&gateway.token),
        "Debug redacts the token"
    );
    let token = gateway.token;

    // It authenticates (403, not 401) but may do nothing the API offers today.
    for (method, path) in [
        ("GET", "/v1/tasks"),
        ("GET", format!("/v1/tasks/{}", submitted.id).as_str()),
        ("GET", "/v1/agents"),
        ("POST", "/v1/agents"),
    ] {
        assert_eq!(
            call(&server, method, path, &token).await,
            (403, "forbidden".to_owned()),
            "{method} {path}"
        );
    }

    // Altered anywhere, it is refused as unauthenticated.
    let mut tampered = token.clone().into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(call(&server, "GET", "/v1/tasks", &tampered).await.0, 401);
    assert_eq!(
        call(&server, "GET", "/v1/tasks", "ftk_garbage").await.0,
        401
    );

    // Past the attempt's deadline (1.5 s after dispatch), it is refused.
    let wait = (request.deadline - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait + std::time::Duration::from_millis(50)).await;
    let (status, code) = call(&server, "GET", "/v1/tasks", &token).await;
    assert_eq!(status, 401, "{code}");
    assert_eq!(
        server.finish(submitted.id).await.status,
        TaskStatus::TimedOut
    );
    agent.stop();
    server.stop().await;
}

on_both_backends!(execute_requests_are_signed, task_tokens_call_models_only);
