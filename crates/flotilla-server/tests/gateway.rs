//! The model gateway through real HTTP: OpenAI-shaped answers and errors, streaming relayed event
//! by event with its usage recorded, retries and fallbacks, timeouts, broken and abandoned
//! streams, budgets that block, downgrade and hold under 200 concurrent calls, and per-minute
//! limits. Upstreams are the built-in simulated provider or the mock provider of the testkit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use chrono::Utc;
use flotilla_core::budget::{Budget, Enforcement, Period};
use flotilla_core::id::TenantId;
use flotilla_core::money::Money;
use flotilla_core::usage::{UsageRecord, UsageStatus};
use flotilla_store::UsageFilter;
use flotilla_testkit::MockProvider;
use serde_json::{Value, json};
use std::time::Duration;
use support::{ADMIN_KEY, Backend, Settings, TestServer, eventually};

on_both_backends!(
    a_simulated_call_answers_in_openai_shape_and_is_recorded,
    bad_input_gets_openai_shaped_errors,
    a_stream_is_relayed_and_its_usage_recorded_from_the_last_chunk,
    failures_are_retried_then_fall_back_and_finally_name_the_upstream_reason,
    a_broken_or_abandoned_stream_is_recorded_and_the_upstream_cancelled,
    a_block_budget_refuses_with_402_and_fires_thresholds_once,
    a_downgrade_budget_switches_to_the_cheaper_model_and_says_so,
    two_hundred_concurrent_calls_cannot_overshoot_a_small_budget,
    tokens_per_minute_are_limited_with_retry_after,
    only_keys_that_may_call_models_do,
    readers_of_the_system_page_do_not_drive_provider_probes,
);

/// Settings with a fast ledger and, when given, a mock provider with models mapped to its
/// behaviours.
fn settings(mock: Option<&MockProvider>) -> Settings {
    let mut s = Settings::default().set("gateway.usage_flush_ms", 50);
    if let Some(mock) = mock {
        s = s.raw(&format!(
            r#"
[providers.mock]
base_url = "{}"
api_key = "env:FLOTILLA_TEST_MOCK_PROVIDER_KEY"
first_token_timeout_ms = 300
timeout_ms = 2000
max_retries = 1
retry_base_ms = 5

[[models]]
name = "mock-ok"
provider = "mock"
upstream = "ok"
prices = {{ input = 1, output = 2 }}

[[models]]
name = "mock-cached"
provider = "mock"
upstream = "cached"
prices = {{ input = 1, cached_input = 0.5, output = 2, reasoning = 4 }}

[[models]]
name = "mock-flaky"
provider = "mock"
upstream = "fail-503"
prices = {{ input = 1, output = 2 }}
fallbacks = ["mock-ok"]

[[models]]
name = "mock-down"
provider = "mock"
upstream = "fail-503"
prices = {{ input = 1, output = 2 }}

[[models]]
name = "mock-refuses"
provider = "mock"
upstream = "fail-400"
prices = {{ input = 1, output = 2 }}
fallbacks = ["mock-ok"]

[[models]]
name = "mock-slow"
provider = "mock"
upstream = "slow-2000"
prices = {{ input = 1, output = 2 }}

[[models]]
name = "mock-malformed"
provider = "mock"
upstream = "malformed"
prices = {{ input = 1, output = 2 }}

[[models]]
name = "mock-endless"
provider = "mock"
upstream = "endless"
prices = {{ input = 1, output = 2 }}

[[models]]
name = "mock-silent"
provider = "mock"
upstream = "no-usage"
prices = {{ input = 1, output = 2 }}
"#,
            mock.base_url
        ));
    }
    s
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn chat(server: &TestServer, key: &str, body: Value) -> Answer {
    let response = server
        .http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.text().await.unwrap(),
    }
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}]})
}

/// The usage records of the default tenant, once `n` are written.
async fn records(server: &TestServer, n: usize) -> Vec<UsageRecord> {
    let store = server.store.clone();
    eventually("usage records written", Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            store
                .list_usage(&UsageFilter {
                    limit: 1000,
                    ..UsageFilter::default()
                })
                .await
                .unwrap()
                .len()
                >= n
        }
    })
    .await;
    server
        .store
        .list_usage(&UsageFilter {
            limit: 1000,
            ..UsageFilter::default()
        })
        .await
        .unwrap()
}

async fn set_budget(server: &TestServer, period: Period, limit: Money, enforcement: Enforcement) {
    server
        .store
        .put_budget(&Budget {
            tenant_id: TenantId::DEFAULT,
            period,
            limit,
            thresholds: vec![50, 80, 90, 100],
            enforcement,
            updated_at: Utc::now(),
        })
        .await
        .unwrap();
}

async fn a_simulated_call_answers_in_openai_shape_and_is_recorded(backend: Backend) {
    let server = TestServer::start(backend, settings(None)).await;
    let a = chat(&server, ADMIN_KEY, hello("gpt-4o")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["system_fingerprint"], "flotilla-simulated");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("simulated")
    );
    assert_eq!(a.header("x-flotilla-simulated"), Some("true"));
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap();
    // gpt-4o: $2.50 in, $10 out per million tokens.
    let cost: Money = a.header("x-flotilla-cost-usd").unwrap().parse().unwrap();
    assert_eq!(
        cost.pico(),
        i64::try_from(prompt * 2_500_000 + completion * 10_000_000).unwrap()
    );

    let models = server
        .http
        .get(server.url("/v1/models"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for m in [
        "gpt-5",
        "gpt-4o",
        "claude-opus-4.1",
        "claude-sonnet-3.5",
        "gemini-2.0-flash",
    ] {
        assert!(names.contains(&m), "{names:?}");
    }

    let auto = chat(&server, ADMIN_KEY, hello("auto")).await;
    assert_eq!(auto.status, 200, "{}", auto.text);

    let r = records(&server, 2).await;
    let first = r.iter().find(|r| r.model == "gpt-4o").unwrap();
    assert_eq!(first.status, UsageStatus::Ok);
    assert_eq!(first.cost, Some(cost));
    assert_eq!(first.tokens.input_tokens, prompt);
    assert!(!first.estimated);
    assert_eq!(first.key_id, "testadmin");
    let auto_record = r
        .iter()
        .find(|r| r.requested_model.as_deref() == Some("auto"))
        .unwrap();
    assert_ne!(auto_record.model, "auto");
    server.stop().await;
}

async fn bad_input_gets_openai_shaped_errors(backend: Backend) {
    let server = TestServer::start(backend, settings(None)).await;
    let a = chat(&server, ADMIN_KEY, hello("gpt-7")).await;
    assert_eq!(a.status, 404);
    let e = &a.json()["error"];
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(e["code"], "model_not_found");
    assert!(
        e["message"].as_str().unwrap().contains("gemini-2.0-flash"),
        "{e}"
    );

    let a = chat(
        &server,
        ADMIN_KEY,
        json!({"model": "gpt-4o", "messages": [{"role": "user"}]}),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "messages[0].content");

    let raw = server
        .http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert_eq!(
        raw.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );

    let a = chat(
        &server,
        "flt_nobody_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        hello("gpt-4o"),
    )
    .await;
    assert_eq!(a.status, 401);
    assert!(a.json()["error"]["message"].is_string());
    server.stop().await;
}

async fn a_stream_is_relayed_and_its_usage_recorded_from_the_last_chunk(backend: Backend) {
    let mock = MockProvider::start().await.unwrap();
    provider_key_is_set();
    let server = TestServer::start(backend, settings(Some(&mock))).await;
    let mut body = hello("mock-cached");
    body["stream"] = json!(true);
    let a = chat(&server, ADMIN_KEY, body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    assert!(a.text.contains("Hello"), "{}", a.text);
    assert!(a.text.trim_end().ends_with("data: [DONE]"), "{}", a.text);
    // The gateway asked for the usage chunk itself, so the client does not see it.
    assert!(!a.text.contains("\"usage\""), "{}", a.text);
    let sent = &mock.received()[0];
    assert_eq!(sent.body["model"], "cached");
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
    assert_eq!(
        sent.authorization.as_deref(),
        Some("Bearer mock-provider-key")
    );
    assert_eq!(
        sent.traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );

    // Asked for by the client: passed on.
    let mut body = hello("mock-ok");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let a = chat(&server, ADMIN_KEY, body).await;
    assert!(a.text.contains("\"usage\""), "{}", a.text);

    // A provider that reports no usage: estimated, flagged.
    let mut body = hello("mock-silent");
    body["stream"] = json!(true);
    assert_eq!(chat(&server, ADMIN_KEY, body).await.status, 200);

    let r = records(&server, 3).await;
    let cached = r.iter().find(|r| r.model == "mock-cached").unwrap();
    assert_eq!(cached.tokens.input_tokens, 10);
    assert_eq!(cached.tokens.cached_input_tokens, 7);
    assert_eq!(cached.tokens.reasoning_tokens, 3);
    assert!(!cached.estimated);
    // 3 uncached × $1 + 7 cached × $0.50 + 2 output × $2 + 3 reasoning × $4 per million.
    assert_eq!(
        cached.cost,
        Some(Money::from_pico(
            3_000_000 + 3_500_000 + 4_000_000 + 12_000_000
        ))
    );
    let silent = r.iter().find(|r| r.model == "mock-silent").unwrap();
    assert!(silent.estimated);
    assert_eq!(
        silent.tokens.output_tokens, 3,
        "one token per content chunk"
    );
    assert!(silent.cost.unwrap() > Money::ZERO);
    server.stop().await;
}

/// The mock provider's key is an `env:` reference. Setting a variable is `unsafe` in edition
/// 2024, which this workspace forbids, so cargo sets it for every test process
/// (`[env]` in .cargo/config.toml).
fn provider_key_is_set() {
    assert_eq!(
        std::env::var("FLOTILLA_TEST_MOCK_PROVIDER_KEY").as_deref(),
        Ok("mock-provider-key"),
        "run the tests through cargo, which sets FLOTILLA_TEST_MOCK_PROVIDER_KEY (.cargo/config.toml)"
    );
}

async fn failures_are_retried_then_fall_back_and_finally_name_the_upstream_reason(
    backend: Backend,
) {
    let mock = MockProvider::start().await.unwrap();
    let server = TestServer::start(backend, settings(Some(&mock))).await;
    let a = chat(&server, ADMIN_KEY, hello("mock-flaky")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-flotilla-model"), Some("mock-ok"));
    // One try and one retry of the failing model, then the fallback.
    let models: Vec<String> = mock
        .received()
        .iter()
        .map(|r| r.body["model"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(models, ["fail-503", "fail-503", "ok"]);

    let a = chat(&server, ADMIN_KEY, hello("mock-down")).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["error"]["type"], "api_error");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mock failure 503"),
        "{}",
        a.text
    );

    // A request the provider refuses is neither retried nor sent elsewhere.
    let before = mock.received().len();
    let a = chat(&server, ADMIN_KEY, hello("mock-refuses")).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(mock.received().len(), before + 1);

    let a = chat(&server, ADMIN_KEY, hello("mock-slow")).await;
    assert_eq!(a.status, 504, "{}", a.text);

    let metrics = server.metrics().await;
    assert!(
        metrics.contains("flotilla_gateway_fallbacks_total{model=\"mock-flaky\"} 1"),
        "{metrics}"
    );
    let r = records(&server, 4).await;
    assert_eq!(
        r.iter().filter(|r| r.status == UsageStatus::Error).count(),
        3
    );
    server.stop().await;
}

async fn a_broken_or_abandoned_stream_is_recorded_and_the_upstream_cancelled(backend: Backend) {
    let mock = MockProvider::start().await.unwrap();
    let server = TestServer::start(backend, settings(Some(&mock))).await;
    let mut body = hello("mock-malformed");
    body["stream"] = json!(true);
    let a = chat(&server, ADMIN_KEY, body).await;
    assert_eq!(a.status, 200);
    assert!(a.text.contains(" two"), "{}", a.text);
    assert!(a.text.contains("\"error\""), "{}", a.text);

    // A client that goes away mid-stream.
    let mut body = hello("mock-endless");
    body["stream"] = json!(true);
    let mut response = server
        .http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        response.chunk().await.unwrap().unwrap();
    }
    assert_eq!(mock.open_streams(), 1);
    drop(response);
    eventually(
        "the upstream stream is cancelled",
        Duration::from_secs(5),
        || async { mock.open_streams() == 0 },
    )
    .await;
    let r = records(&server, 2).await;
    let broken = r.iter().find(|r| r.model == "mock-malformed").unwrap();
    assert_eq!(broken.status, UsageStatus::Error);
    assert_eq!(broken.tokens.output_tokens, 2);
    let gone = r.iter().find(|r| r.model == "mock-endless").unwrap();
    assert_eq!(gone.status, UsageStatus::Cancelled);
    assert!(gone.tokens.output_tokens >= 3, "{gone:?}");
    assert!(gone.cost.unwrap() > Money::ZERO);
    server.stop().await;
}

async fn a_block_budget_refuses_with_402_and_fires_thresholds_once(backend: Backend) {
    let mock = MockProvider::start().await.unwrap();
    let server = TestServer::start(backend, settings(Some(&mock))).await;
    // mock-ok costs 10 × $1 + 5 × $2 = $0.00002 per call. Its reservation is dearer: a prompt
    // token per byte of the body (about 70) at $1 and 5 output tokens at $2, about $0.00008. A
    // budget of $0.001 takes calls until less than one reservation is left: over 90 % of it.
    set_budget(
        &server,
        Period::Monthly,
        "0.001".parse().unwrap(),
        Enforcement::Block,
    )
    .await;
    let mut body = hello("mock-ok");
    body["max_tokens"] = json!(5);
    let mut ok = 0;
    let mut refused = None;
    for _ in 0..100 {
        let a = chat(&server, ADMIN_KEY, body.clone()).await;
        match a.status {
            200 => ok += 1,
            402 => {
                refused = Some(a);
                break;
            }
            s => panic!("{s}: {}", a.text),
        }
    }
    let refused = refused.expect("the budget never refused");
    assert!(ok >= 1, "no call fitted");
    let e = &refused.json()["error"];
    assert_eq!(e["type"], "insufficient_quota");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("monthly budget of $0.001"), "{message}");
    assert!(message.contains("resets at"), "{message}");
    // Every call (the refused one too) is in the ledger before its spend is read.
    let _ = records(&server, ok + 1).await;
    let spent = server
        .store
        .usage_spend(
            TenantId::DEFAULT,
            Period::Monthly.window(Utc::now()).0,
            Period::Monthly.window(Utc::now()).1,
        )
        .await
        .unwrap();
    assert!(spent <= "0.001".parse().unwrap(), "{spent}");
    // Each answered call cost 10 × $1 + 5 × $2 per million tokens; the refused one nothing.
    assert_eq!(
        spent,
        Money::from_pico(20_000_000 * i64::try_from(ok).unwrap()),
        "{ok} calls"
    );
    // Thresholds fired once each, as events.
    let store = server.store.clone();
    eventually("budget events", Duration::from_secs(5), || {
        let store = store.clone();
        async move {
            let events = store
                .list_events(&flotilla_store::EventFilter {
                    kind: Some(flotilla_core::event::EventKind::Budget),
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap();
            events.len() >= 2
        }
    })
    .await;
    let events = server
        .store
        .list_events(&flotilla_store::EventFilter {
            kind: Some(flotilla_core::event::EventKind::Budget),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let fifty = events
        .iter()
        .filter(|e| e.message.contains("reached 50%"))
        .count();
    assert_eq!(fifty, 1, "{events:?}");
    let metrics = server.metrics().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("flotilla_budget_utilisation_ratio{") && l.contains("monthly"))
        .unwrap_or_else(|| panic!("no budget utilisation gauge: {metrics}"));
    let ratio: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(ratio > 0.5 && ratio <= 1.0, "{line}");
    server.stop().await;
}

async fn a_downgrade_budget_switches_to_the_cheaper_model_and_says_so(backend: Backend) {
    let server = TestServer::start(backend, settings(None)).await;
    // gpt-5's ceiling for a default request (4096 output tokens × $10/M) is about $0.04, far
    // over a one-cent budget; gpt-4o's is too; gemini-2.0-flash's fits.
    set_budget(
        &server,
        Period::Daily,
        "0.01".parse().unwrap(),
        Enforcement::Downgrade,
    )
    .await;
    let a = chat(&server, ADMIN_KEY, hello("gpt-5")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-flotilla-downgraded-from"), Some("gpt-5"));
    assert_eq!(a.header("x-flotilla-model"), Some("gemini-2.0-flash"));
    let v = a.json();
    assert_eq!(v["x_flotilla"]["downgraded_from"], "gpt-5");
    assert!(
        v["x_flotilla"]["reason"]
            .as_str()
            .unwrap()
            .contains("daily budget")
    );
    let r = records(&server, 1).await;
    assert_eq!(r[0].model, "gemini-2.0-flash");
    assert_eq!(r[0].requested_model.as_deref(), Some("gpt-5"));
    server.stop().await;
}

async fn two_hundred_concurrent_calls_cannot_overshoot_a_small_budget(backend: Backend) {
    let server = TestServer::start(backend, settings(None)).await;
    // Each call of gemini-2.0-flash with max_tokens 50 reserves its ceiling; a budget of
    // $0.0005 holds a few dozen such calls at most.
    let limit: Money = "0.0005".parse().unwrap();
    set_budget(&server, Period::Monthly, limit, Enforcement::Block).await;
    let mut body = hello("gemini-2.0-flash");
    body["max_tokens"] = json!(50);
    let mut calls = Vec::new();
    for _ in 0..200 {
        let http = server.http.clone();
        let url = server.url("/v1/chat/completions");
        let body = body.clone();
        calls.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(ADMIN_KEY)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for c in calls {
        match c.await.unwrap() {
            200 => ok += 1,
            402 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    let r = records(&server, 200).await;
    let spent: Money = r.iter().filter_map(|r| r.cost).sum();
    // The ceiling bounds each call, so the spend stays within the limit: the overshoot is
    // bounded by the reservations in flight, which the check already counts.
    assert!(spent <= limit, "spent {spent} of {limit} with {ok} calls");
    let ceiling = flotilla_core::model::default_models()
        .into_iter()
        .find(|m| m.name == "gemini-2.0-flash")
        .unwrap()
        .prices
        // Budgets reserve a token per byte of the body: no prompt can count more.
        .ceiling(serde_json::to_vec(&body).unwrap().len() as u64, 50)
        .unwrap();
    // Once the calls in flight have settled at their (smaller) actual cost, their reservations
    // are released: a call that fits under the limit again goes through.
    if spent + ceiling <= limit {
        assert_eq!(chat(&server, ADMIN_KEY, body.clone()).await.status, 200);
    }
    assert_eq!(
        r.iter()
            .filter(|r| r.status == UsageStatus::Rejected)
            .count(),
        refused
    );
    server.stop().await;
}

async fn tokens_per_minute_are_limited_with_retry_after(backend: Backend) {
    let server = TestServer::start(
        backend,
        settings(None).set("gateway.tenant_tokens_per_minute", 300),
    )
    .await;
    let mut body = hello("gemini-2.0-flash");
    body["max_tokens"] = json!(100);
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..30 {
        let a = chat(&server, ADMIN_KEY, body.clone()).await;
        statuses.push(a.status);
        if a.status == 429 {
            limited = Some(a);
            break;
        }
    }
    let limited = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert_eq!(limited.json()["error"]["type"], "rate_limit_error");
    assert!(
        limited.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("300 tokens per minute")
    );
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Reserved from max_tokens (over 100 a call), reconciled with the smaller actual use: more
    // calls fit than the 2 that 300 / (prompt + 100) would allow without reconciliation.
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 4,
        "{statuses:?}"
    );
    server.stop().await;
}

async fn only_keys_that_may_call_models_do(backend: Backend) {
    use flotilla_core::auth::Role;
    let server = TestServer::start(backend, settings(None)).await;
    let viewer = server.create_key(Role::Viewer, TenantId::DEFAULT).await;
    let a = chat(&server, &viewer, hello("gpt-4o")).await;
    assert_eq!(a.status, 403, "{}", a.text);
    assert_eq!(a.json()["error"]["type"], "permission_error");
    for role in [Role::Agent, Role::Submitter, Role::Operator] {
        let key = server.create_key(role, TenantId::DEFAULT).await;
        assert_eq!(
            chat(&server, &key, hello("gpt-4o")).await.status,
            200,
            "{role:?}"
        );
    }
    server.stop().await;
}

/// `GET /v1/system` probes the providers with the platform's keys; readers polling it reuse the
/// last probe for 30 s instead of calling the provider each time.
async fn readers_of_the_system_page_do_not_drive_provider_probes(backend: Backend) {
    let mock = MockProvider::start().await.unwrap();
    let server = TestServer::start(backend, settings(Some(&mock))).await;
    let viewer = server
        .create_key(flotilla_core::auth::Role::Viewer, TenantId::DEFAULT)
        .await;
    let mut polls = Vec::new();
    for _ in 0..20 {
        polls.push(server.send(&viewer, reqwest::Method::GET, "/v1/system", None));
    }
    for (status, body) in futures::future::join_all(polls).await {
        assert_eq!(status, 200, "{body}");
        let mock_status = body["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "mock")
            .cloned()
            .unwrap();
        assert_eq!(mock_status["reachable"], true, "{body}");
    }
    assert_eq!(mock.model_lists(), 1, "one probe for twenty readers");
    server.stop().await;
}
