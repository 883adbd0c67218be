//! Who a request comes from, and the throttle of failed authentications (issue 15, item 1): the
//! client address is read from forwarding headers only when the peer is a trusted proxy; IPv6
//! sources count by their /64; a valid key is never refused by the throttle; `/metrics`
//! authenticates through the same path (throttled and audited). On SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use serde_json::Value;
use support::{ADMIN_KEY, Backend, Settings, TestServer};

on_both_backends!(
    behind_a_trusted_proxy_each_client_is_throttled_on_its_own,
    forwarding_headers_from_other_peers_change_nothing,
    metrics_keys_are_throttled_and_audited_like_any_other,
);

const BAD: &str = "flt_guess_wrongsecret";

/// `GET path` with `key`, as forwarded for `client` (an `X-Forwarded-For` value), if any.
async fn get(server: &TestServer, key: &str, path: &str, client: Option<&str>) -> u16 {
    let mut request = server.http.get(server.url(path)).bearer_auth(key);
    if let Some(client) = client {
        request = request.header("x-forwarded-for", client);
    }
    request.send().await.unwrap().status().as_u16()
}

fn settings(trusted: &[&str]) -> Settings {
    let trusted: Vec<toml::Value> = trusted.iter().map(|t| (*t).into()).collect();
    Settings::default()
        .set("rate_limits.auth_failures", "3/m")
        .set("server.trusted_proxies", trusted)
}

async fn behind_a_trusted_proxy_each_client_is_throttled_on_its_own(backend: Backend) {
    let server = TestServer::start(backend, settings(&["127.0.0.1"])).await;
    let client = Some("198.51.100.1, 203.0.113.7");
    for _ in 0..4 {
        assert_eq!(get(&server, BAD, "/v1/tasks", client).await, 401);
    }
    assert_eq!(get(&server, BAD, "/v1/tasks", client).await, 429);
    // Another client behind the same proxy is not affected, and the throttled one is still
    // served with a valid key.
    assert_eq!(
        get(&server, BAD, "/v1/tasks", Some("203.0.113.8")).await,
        401
    );
    assert_eq!(get(&server, ADMIN_KEY, "/v1/tasks", client).await, 200);
    // The forwarded header's Forwarded twin is read too, with brackets and ports.
    assert_eq!(
        server
            .http
            .get(server.url("/v1/tasks"))
            .bearer_auth(BAD)
            .header("forwarded", "for=\"203.0.113.7:4711\"")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        429
    );

    // IPv6 clients count by their /64: four addresses of one /64 exhaust it together.
    for host in 1..=4 {
        let client = format!("2001:db8:0:1::{host}");
        assert_eq!(get(&server, BAD, "/v1/tasks", Some(&client)).await, 401);
    }
    assert_eq!(
        get(&server, BAD, "/v1/tasks", Some("2001:db8:0:1:ffff::9")).await,
        429
    );
    assert_eq!(
        get(&server, BAD, "/v1/tasks", Some("2001:db8:0:2::1")).await,
        401
    );
    server.stop().await;
}

async fn forwarding_headers_from_other_peers_change_nothing(backend: Backend) {
    // The proxy is elsewhere: this test's requests come from 127.0.0.1, an untrusted peer.
    let server = TestServer::start(backend, settings(&["10.0.0.0/8"])).await;
    for n in 0..4 {
        let spoofed = format!("192.0.2.{n}");
        assert_eq!(get(&server, BAD, "/v1/tasks", Some(&spoofed)).await, 401);
    }
    // Every failure counted against the peer, whatever the header claimed.
    assert_eq!(
        get(&server, BAD, "/v1/tasks", Some("192.0.2.200")).await,
        429
    );
    assert_eq!(get(&server, ADMIN_KEY, "/v1/tasks", None).await, 200);
    server.stop().await;
}

async fn metrics_keys_are_throttled_and_audited_like_any_other(backend: Backend) {
    let server = TestServer::start(backend, settings(&["127.0.0.1"])).await;
    let client = Some("203.0.113.9");
    for _ in 0..4 {
        assert_eq!(get(&server, BAD, "/metrics", client).await, 401);
    }
    assert_eq!(get(&server, BAD, "/metrics", client).await, 429);
    assert_eq!(get(&server, ADMIN_KEY, "/metrics", client).await, 200);
    let (status, audit) = server
        .send(
            ADMIN_KEY,
            reqwest::Method::GET,
            "/v1/audit?action=auth.failure&limit=100",
            None,
        )
        .await;
    assert_eq!(status, 200, "{audit}");
    let failures: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == "/metrics")
        .collect();
    // Aggregated per source and minute: one entry (a second, and the count, when the test
    // straddles a minute).
    assert!((1..=3).contains(&failures.len()), "{audit}");
    assert!(
        failures.iter().all(|e| e["source"] == "203.0.113.9"),
        "{failures:?}"
    );
    server.stop().await;
}
