//! Rate limits through real HTTP: per key, per tenant across its keys, and the throttling of a
//! source that keeps failing to authenticate. And the key lifecycle a tenant operator relies on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::auth::Role;
use flotilla_core::id::TenantId;
use serde_json::{Value, json};
use support::{ADMIN_KEY, Backend, Settings, TestServer};

on_both_backends!(
    a_key_past_its_rate_gets_429_with_retry_after,
    a_tenant_rate_holds_across_its_keys_and_follows_changes,
    a_source_that_keeps_failing_is_throttled,
    operators_manage_their_tenants_keys_but_never_grant_admin,
);

async fn get(server: &TestServer, key: &str, path: &str) -> (u16, Option<String>, Value) {
    let response = server
        .http
        .get(server.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn post(server: &TestServer, key: &str, path: &str, body: Value) -> (u16, Value) {
    let response = server
        .http
        .post(server.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn a_key_past_its_rate_gets_429_with_retry_after(backend: Backend) {
    let server = TestServer::start(backend, Settings::default()).await;
    let (status, created) = post(
        &server,
        ADMIN_KEY,
        "/v1/keys",
        json!({"name": "slow", "role": "viewer", "rate_limit": "3/m"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["rate_limit"], "3/m");
    let slow = created["key"].as_str().unwrap();
    for _ in 0..3 {
        assert_eq!(get(&server, slow, "/v1/pools").await.0, 200);
    }
    let (status, retry_after, body) = get(&server, slow, "/v1/pools").await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("3/m"),
        "{body}"
    );
    let retry_after: u64 = retry_after.unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    // Other keys are not affected.
    assert_eq!(get(&server, ADMIN_KEY, "/v1/pools").await.0, 200);
    server.stop().await;
}

async fn a_tenant_rate_holds_across_its_keys_and_follows_changes(backend: Backend) {
    let server = TestServer::start(backend, Settings::default()).await;
    let (status, tenant) = post(
        &server,
        ADMIN_KEY,
        "/v1/tenants",
        json!({"name": "metered", "rate_limit": "4/m"}),
    )
    .await;
    assert_eq!(status, 201, "{tenant}");
    let id: TenantId = tenant["id"].as_str().unwrap().parse().unwrap();
    let first = server.create_key(Role::Viewer, id).await;
    let second = server.create_key(Role::Viewer, id).await;
    for key in [&first, &second, &first, &second] {
        assert_eq!(get(&server, key, "/v1/pools").await.0, 200);
    }
    let (status, _, body) = get(&server, &second, "/v1/pools").await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tenant")
    );
    // Another tenant is unaffected; raising the tenant's rate takes effect at once.
    assert_eq!(get(&server, ADMIN_KEY, "/v1/pools").await.0, 200);
    let response = server
        .http
        .patch(server.url(&format!("/v1/tenants/{id}")))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"rate_limit": "1000/s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(get(&server, &first, "/v1/pools").await.0, 200);
    server.stop().await;
}

async fn a_source_that_keeps_failing_is_throttled(backend: Backend) {
    let server = TestServer::start(
        backend,
        Settings::default().set("rate_limits.auth_failures", "3/m"),
    )
    .await;
    for _ in 0..3 {
        let (status, _, _) = get(&server, "flt_guess_wrongsecret", "/v1/tasks").await;
        assert_eq!(status, 401);
    }
    // The fourth failure exhausts the rate: from then on a request from this address without a
    // valid key gets 429 before its key counts again, and a valid key is still served (other
    // clients behind the same address must not be locked out).
    assert_eq!(
        get(&server, "flt_guess_wrongsecret", "/v1/tasks").await.0,
        401
    );
    let (status, retry_after, body) = get(&server, "flt_guess_other", "/v1/tasks").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert!(retry_after.unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(get(&server, ADMIN_KEY, "/v1/tasks").await.0, 200);
    // Probes stay open.
    let health = server.http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    server.stop().await;
}

async fn operators_manage_their_tenants_keys_but_never_grant_admin(backend: Backend) {
    let server = TestServer::start(backend, Settings::default()).await;
    let operator = server.create_key(Role::Operator, TenantId::DEFAULT).await;
    let (status, body) = post(
        &server,
        &operator,
        "/v1/keys",
        json!({"name": "escalation", "role": "admin"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, created) = post(
        &server,
        &operator,
        "/v1/keys",
        json!({"name": "ci pipeline", "role": "submitter",
               "expires_at": (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339()}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("flt_{id}_")));
    assert_eq!(get(&server, &key, "/v1/tasks").await.0, 200);

    // Listed without the secret or its hash.
    let (status, _, list) = get(&server, &operator, "/v1/keys").await;
    assert_eq!(status, 200);
    let text = list.to_string();
    let secret = &key[key.rfind('_').unwrap() + 1..];
    assert!(
        !text.contains(secret) && !text.contains("secret_hash"),
        "{text}"
    );
    assert!(
        list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id)
    );

    // An expiry in the past is refused, naming the field.
    let (status, body) = post(
        &server,
        &operator,
        "/v1/keys",
        json!({"name": "x", "role": "viewer", "expires_at": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("expires_at"))
    );

    // Revoked: refused at once, and the revocation is audited.
    let response = server
        .http
        .delete(server.url(&format!("/v1/keys/{id}")))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(get(&server, &key, "/v1/tasks").await.0, 401);
    let (status, _, audit) = get(&server, ADMIN_KEY, "/v1/audit?limit=1000").await;
    assert_eq!(status, 200);
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(actions.contains(&("key.create", "success")), "{actions:?}");
    assert!(actions.contains(&("key.revoke", "success")), "{actions:?}");
    assert!(!audit.to_string().contains(secret));
    // The bootstrap admin key cannot be revoked by an operator.
    let response = server
        .http
        .delete(server.url("/v1/keys/testadmin"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    server.stop().await;
}
