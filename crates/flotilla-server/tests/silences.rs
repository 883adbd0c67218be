//! Who may silence what (issue 15, "platform switches belong to the platform"): a tenant's
//! operator silences only its own tenant's alerts of rules by tenant that merely notify, sees
//! only those silences and the platform's, and ends only those it may make; admins act for the
//! platform. On SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::auth::Role;
use flotilla_core::id::TenantId;
use flotilla_core::tenant::Tenant;
use reqwest::Method;
use serde_json::{Value, json};
use support::{ADMIN_KEY, Backend, Settings, TestServer};

on_both_backends!(tenants_silence_only_their_own_notifications);

/// Two rules by tenant — one that only notifies, one that also limits the tenant's rate.
const RULES: &str = r#"
[[alerts]]
name = "tenant_tokens"
signal = "hourly_tokens"
by = "tenant"
comparison = ">"
threshold = 1000000000
for = "0s"
severity = "info"

[[alerts]]
name = "tenant_limit"
signal = "hourly_tokens"
by = "tenant"
comparison = ">"
threshold = 1000000000
for = "0s"
severity = "warning"
actions = ["notify", "rate_limit"]
"#;

async fn silence(server: &TestServer, key: &str, body: Value) -> (u16, Value) {
    server
        .send(key, Method::POST, "/v1/alerts/silences", Some(body))
        .await
}

async fn listed(server: &TestServer, key: &str) -> Vec<String> {
    let (status, body) = server
        .send(key, Method::GET, "/v1/alerts/silences", None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["silences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn tenants_silence_only_their_own_notifications(backend: Backend) {
    let server = TestServer::start(backend, Settings::default().raw(RULES)).await;
    let b = TenantId(uuid::Uuid::now_v7());
    server
        .store
        .create_tenant(&Tenant {
            id: b,
            name: "b".into(),
            created_at: chrono::Utc::now(),
            rate_limit: None,
        })
        .await
        .unwrap();
    let operator = server.create_key(Role::Operator, b).await;
    let a = TenantId::DEFAULT;

    // Its own notifications: yes, and a silence without a tenant is of its own alerts.
    let (status, own) = silence(
        &server,
        &operator,
        json!({"rule": "tenant_tokens", "duration_s": 60}),
    )
    .await;
    assert_eq!(
        (status, own["tenant"].as_str()),
        (201, Some(b.to_string().as_str())),
        "{own}"
    );
    // Another tenant's alerts, a rule acting on the platform, a rule not by tenant: no.
    for (body, says) in [
        (
            json!({"rule": "tenant_tokens", "duration_s": 60, "tenant": a}),
            "its own",
        ),
        (
            json!({"rule": "tenant_limit", "duration_s": 60}),
            "rate_limit",
        ),
        (
            json!({"rule": "success_rate_low", "duration_s": 60}),
            "only admins",
        ),
    ] {
        let (status, refused) = silence(&server, &operator, body.clone()).await;
        assert_eq!(status, 403, "{body}: {refused}");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }

    // The platform's silences and other tenants' own.
    let (_, platform) = silence(
        &server,
        ADMIN_KEY,
        json!({"rule": "success_rate_low", "duration_s": 60}),
    )
    .await;
    let (_, of_a) = silence(
        &server,
        ADMIN_KEY,
        json!({"rule": "tenant_tokens", "duration_s": 60, "tenant": a}),
    )
    .await;
    let id = |s: &Value| s["id"].as_str().unwrap().to_owned();
    let mut seen = listed(&server, &operator).await;
    seen.sort();
    let mut want = vec![id(&own), id(&platform)];
    want.sort();
    assert_eq!(seen, want, "its own and the platform's, not tenant A's");
    assert_eq!(listed(&server, ADMIN_KEY).await.len(), 3);

    // It cannot end the platform's silence, nor even find A's; it ends its own.
    let delete = |silence: &Value| format!("/v1/alerts/silences/{}", id(silence));
    let (status, _) = server
        .send(&operator, Method::DELETE, &delete(&platform), None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .send(&operator, Method::DELETE, &delete(&of_a), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .send(&operator, Method::DELETE, &delete(&own), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed(&server, ADMIN_KEY).await.len(), 2);
    server.stop().await;
}
