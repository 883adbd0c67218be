//! Budgets cannot be bypassed (issue 16; docs/api.md, "Budgets"): a call reserves the dearest
//! model it may be served by, at the most prompt tokens its body can count; a model without a
//! price is refused to tenants with a budget unless marked free; a call that settles above its
//! reservation is reported. On SQLite and PostgreSQL, and on three replicas sharing PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use chrono::Utc;
use flotilla_core::auth::Role;
use flotilla_core::budget::{Budget, Enforcement, Period};
use flotilla_core::id::TenantId;
use flotilla_core::money::Money;
use flotilla_store::UsageFilter;
use flotilla_testkit::MockProvider;
use serde_json::{Value, json};
use std::time::Duration;
use support::{ADMIN_KEY, Backend, Settings, TestServer, eventually};

on_both_backends!(
    models_without_a_price_are_refused_to_tenants_with_a_budget,
    a_call_reserves_its_dearest_fallback_and_an_overshoot_is_reported,
);

/// Models served by the mock provider: priced and unpriced, a cheap one that fails over to a
/// dearer one, and one whose provider reports far more prompt tokens than the request holds.
fn settings(mock: &MockProvider) -> Settings {
    Settings::default()
        .set("gateway.usage_flush_ms", 50)
        .raw(&format!(
            r#"
[providers.mock]
base_url = "{}"
api_key = "env:FLOTILLA_TEST_MOCK_PROVIDER_KEY"
max_retries = 0
retry_base_ms = 5

[[models]]
name = "unpriced"
provider = "mock"
upstream = "ok"

[[models]]
name = "free"
provider = "mock"
upstream = "ok"
free = true

[[models]]
name = "priced-with-unpriced-fallback"
provider = "mock"
upstream = "ok"
prices = {{ input = 1, output = 2 }}
fallbacks = ["unpriced"]

[[models]]
name = "cheap-flaky"
provider = "mock"
upstream = "fail-503"
prices = {{ input = 1, output = 2 }}
fallbacks = ["dear"]

[[models]]
name = "dear"
provider = "mock"
upstream = "ok"
prices = {{ input = 100, output = 200 }}

[[models]]
name = "heavy"
provider = "mock"
upstream = "heavy-1000000"
prices = {{ input = 1, output = 2 }}
"#,
            mock.base_url
        ))
}

fn hello(model: &str) -> Value {
    json!({"model": model, "max_tokens": 16,
           "messages": [{"role": "user", "content": "Say hello"}]})
}

async fn call(server: &TestServer, key: &str, model: &str) -> (u16, Value) {
    server
        .send(
            key,
            reqwest::Method::POST,
            "/v1/chat/completions",
            Some(hello(model)),
        )
        .await
}

/// A tenant with a monthly `block` budget of `limit` and a submitter key.
async fn budgeted(server: &TestServer, limit: &str) -> (TenantId, String) {
    let tenant = server
        .create_tenant(&format!("budgeted-{}", uuid::Uuid::now_v7()))
        .await;
    server
        .store
        .put_budget(&Budget {
            tenant_id: tenant,
            period: Period::Monthly,
            limit: limit.parse().unwrap(),
            thresholds: vec![100],
            enforcement: Enforcement::Block,
            updated_at: Utc::now(),
        })
        .await
        .unwrap();
    (tenant, server.create_key(Role::Submitter, tenant).await)
}

/// What `tenant` has spent, once its `n` calls are in the ledger.
async fn spent(server: &TestServer, tenant: TenantId, n: usize) -> Money {
    let list = || async {
        server
            .store
            .list_usage(&UsageFilter {
                tenant_id: Some(tenant),
                limit: 1000,
                ..UsageFilter::default()
            })
            .await
            .unwrap()
    };
    eventually("usage recorded", Duration::from_secs(10), || async {
        list().await.len() >= n
    })
    .await;
    list().await.iter().filter_map(|r| r.cost).sum()
}

async fn models_without_a_price_are_refused_to_tenants_with_a_budget(backend: Backend) {
    let mock = MockProvider::start().await.unwrap();
    let server = TestServer::start(backend, settings(&mock)).await;
    let (_, key) = budgeted(&server, "100").await;
    let (status, body) = call(&server, &key, "unpriced").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unpriced_model");
    assert_eq!(body["error"]["param"], "model");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`unpriced` has no price") && message.contains("free = true"),
        "{message}"
    );
    // A fallback without a price is as good as none.
    let (status, body) = call(&server, &key, "priced-with-unpriced-fallback").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`unpriced`, which `priced-with-unpriced-fallback` may fall back to"),
        "{body}"
    );
    // Marked free by an admin, it may be called; and a tenant without a budget is not refused.
    assert_eq!(call(&server, &key, "free").await.0, 200);
    assert_eq!(call(&server, ADMIN_KEY, "unpriced").await.0, 200);
    server.stop().await;
}

async fn a_call_reserves_its_dearest_fallback_and_an_overshoot_is_reported(backend: Backend) {
    let mock = MockProvider::start().await.unwrap();
    let server = TestServer::start(backend, settings(&mock)).await;
    // Enough for one call reserved at `cheap-flaky`'s own prices, not at `dear`'s, which serves
    // it: the reservation must be the dearer one, so the call is refused rather than overrun.
    // "Say hello" with `max_tokens` 16 reserves about $0.0001 at `cheap-flaky`'s prices and
    // $0.012 at `dear`'s; `dear` then costs $0.002 (10 prompt and 5 completion tokens).
    let (_, key) = budgeted(&server, "0.001").await;
    let (status, body) = call(&server, &key, "cheap-flaky").await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(mock.received().len(), 0, "refused before any provider call");

    // With room for it, the call falls back to `dear`, within its reservation: no overshoot.
    let (rich, rich_key) = budgeted(&server, "1").await;
    let (status, body) = call(&server, &rich_key, "cheap-flaky").await;
    assert_eq!(status, 200, "{body}");
    assert!(spent(&server, rich, 1).await > Money::ZERO);
    assert!(
        !server
            .metrics()
            .await
            .contains("flotilla_budget_overshoots_total{")
    );

    // A provider that counts a million prompt tokens for "Say hello" overruns any reservation
    // the request allows: the call is served, and the overshoot counted and recorded.
    let (status, body) = call(&server, &rich_key, "heavy").await;
    assert_eq!(status, 200, "{body}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("flotilla_budget_overshoots_total{model=\"heavy\"} 1"),
        "{metrics}"
    );
    // Events are written in batches.
    let overshoots = || async {
        server
            .client
            .list_events(&[("kind", "budget".to_owned())])
            .await
            .unwrap()
            .events
            .into_iter()
            .filter(|e| e.message.contains("overshot a budget reservation"))
            .collect::<Vec<_>>()
    };
    eventually("the overshoot event", Duration::from_secs(5), || async {
        !overshoots().await.is_empty()
    })
    .await;
    let event = overshoots().await.remove(0);
    assert_eq!(event.tenant, Some(rich));
    assert!(
        event.message.contains("a call of heavy cost $"),
        "{}",
        event.message
    );
    server.stop().await;
}

/// 200 concurrent calls on three replicas sharing one PostgreSQL, each falling back to the dearer
/// model: the tenant's spend stays within its `block` budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_calls_on_three_replicas_stay_within_the_budget() {
    let mock = MockProvider::start_with(false).await.unwrap();
    let database = support::Database::create(Backend::Postgres);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(TestServer::start_on(database.location.open().await, settings(&mock)).await);
    }
    let limit: Money = "0.05".parse().unwrap();
    let (tenant, key) = budgeted(&replicas[0], "0.05").await;
    let mut calls = Vec::new();
    for i in 0..200 {
        let replica = &replicas[i % 3];
        let (http, url, key) = (
            replica.http.clone(),
            replica.url("/v1/chat/completions"),
            key.clone(),
        );
        calls.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(key)
                .json(&hello("cheap-flaky"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for c in calls {
        match c.await.unwrap() {
            200 => ok += 1,
            402 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    let spent = spent(&replicas[0], tenant, 200).await;
    assert!(spent <= limit, "spent {spent} of {limit} with {ok} calls");
    for replica in &replicas {
        assert!(
            !replica
                .metrics()
                .await
                .contains("flotilla_budget_overshoots_total{")
        );
    }
    for replica in replicas {
        replica.stop().await;
    }
    database.remove().await;
}
