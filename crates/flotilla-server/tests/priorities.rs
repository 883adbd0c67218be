//! Priority has a ceiling per role (issue 15, "platform switches belong to the platform"):
//! priority orders the queue and decides what emergency mode sheds, so a submitter may not pick
//! any. On SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::auth::Role;
use flotilla_core::id::TenantId;
use serde_json::json;
use support::{ADMIN_KEY, Backend, Settings, TestServer};

on_both_backends!(each_role_submits_up_to_its_ceiling);

async fn submit(server: &TestServer, key: &str, priority: i32) -> (u16, serde_json::Value) {
    server
        .send(
            key,
            reqwest::Method::POST,
            "/v1/tasks",
            Some(json!({"agent_type": "idle", "input": {}, "priority": priority})),
        )
        .await
}

async fn each_role_submits_up_to_its_ceiling(backend: Backend) {
    let server = TestServer::start(
        backend,
        Settings::default()
            .pool("idle")
            .set("scheduler.max_priority.operator", 7),
    )
    .await;
    let submitter = server.create_key(Role::Submitter, TenantId::DEFAULT).await;
    let operator = server.create_key(Role::Operator, TenantId::DEFAULT).await;
    // Submitters: up to the default priority.
    assert_eq!(submit(&server, &submitter, 5).await.0, 202);
    let (status, body) = submit(&server, &submitter, 6).await;
    assert_eq!(status, 403, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("up to 5") && message.contains("scheduler.max_priority"),
        "{message}"
    );
    // Operators: as configured; admins: every priority.
    assert_eq!(submit(&server, &operator, 7).await.0, 202);
    assert_eq!(submit(&server, &operator, 8).await.0, 403);
    assert_eq!(submit(&server, ADMIN_KEY, 9).await.0, 202);
    server.stop().await;
}
