//! Control plane → agent traffic (DESIGN.md §6): every `/execute` is signed with the instance's
//! secret over the exact bytes sent.

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

on_both_backends!(execute_requests_are_signed);
