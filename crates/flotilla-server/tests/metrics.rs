//! `/metrics` (docs/design.md §11): every name existing dashboards and autoscalers query is present
//! with the values the control plane reports, the output passes `promtool check metrics`, and
//! the endpoint needs a key unless configured open.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::task::TaskStatus;
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::{Behaviour, ScriptedAgent};
use serde_json::json;
use std::io::Write as _;
use std::process::{Command, Stdio};
use support::{ADMIN_KEY, Backend, Settings, TestServer, task};

/// The names docs/design.md §11 fixes.
const REQUIRED: [&str; 8] = [
    "ai_agents_total",
    "ai_task_duration_seconds",
    "ai_agent_load",
    "ai_agent_requests_total",
    "ai_agent_response_time_seconds",
    "ai_agent_success_rate",
    "ai_agent_token_usage_total",
    "ai_agent_queue_length",
];

async fn scrape(
    server: &TestServer,
    key: Option<&str>,
    accept: Option<&str>,
) -> (u16, String, String) {
    let mut request = server.http.get(server.url("/metrics"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// The value of the sample whose line starts with `series` (name and labels, exactly).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn promtool(text: &str) -> (i32, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (Debian package `prometheus`; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_required_names_and_values_and_pass_promtool() {
    let settings = Settings::default().pool("echo").pool("parked");
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let id = server.register(&agent, "echo", 4).await;
    let usage =
        json!({"report_usage": [{"model": "gpt-4o", "input_tokens": 120, "output_tokens": 30}]});
    for _ in 0..3 {
        let done = server
            .finish(server.submit(&task("echo", usage.clone())).await.id)
            .await;
        assert_eq!(done.status, TaskStatus::Succeeded);
    }
    // A pool without instances: its tasks wait.
    for _ in 0..5 {
        server.submit(&SubmitTask::new("parked", json!({}))).await;
    }

    let (status, content_type, text) = scrape(&server, Some(ADMIN_KEY), None).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    for name in REQUIRED {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{text}"
        );
    }
    assert_eq!(
        value(&text, r#"ai_agent_queue_length{agent_type="parked"}"#),
        Some(5.0)
    );
    assert_eq!(
        value(&text, r#"ai_agent_queue_length{agent_type="echo"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(&text, r#"ai_agents_total{type="echo",status="idle"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, &format!(r#"ai_agent_load{{agent_id="{id}"}}"#)),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            r#"ai_agent_requests_total{agent_type="echo",status="success",endpoint="execute"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &text,
            r#"ai_agent_token_usage_total{agent_type="echo",model="gpt-4o",direction="input"}"#
        ),
        Some(360.0)
    );
    assert_eq!(
        value(&text, r#"ai_agent_success_rate{agent_type="echo"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"ai_task_duration_seconds_count{agent_type="echo",status="succeeded"}"#
        ),
        Some(3.0)
    );
    assert!(
        value(
            &text,
            r#"flotilla_http_requests_total{route="/v1/tasks",method="POST",status="202"}"#
        )
        .is_some_and(|n| n >= 8.0),
        "{text}"
    );
    // The store: every submission went through one timed insert, every claim through a timed
    // claim; the pools report their connections.
    assert!(
        value(
            &text,
            r#"flotilla_store_query_duration_seconds_count{operation="insert_tasks"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        value(
            &text,
            r#"flotilla_store_query_duration_seconds_count{operation="finish_attempts"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let max = value(&text, r#"flotilla_store_connections{state="max"}"#).unwrap_or(0.0);
    let open = value(&text, r#"flotilla_store_connections{state="open"}"#).unwrap_or(-1.0);
    assert!(max >= 2.0 && (1.0..=max).contains(&open), "{max} {open}");
    assert!(
        !text.contains("# EOF"),
        "the classic format has no EOF marker"
    );

    let (code, said) = promtool(&text);
    assert_eq!(code, 0, "promtool check metrics: {said}\n{text}");

    // Scrapers that ask for OpenMetrics get it.
    let (_, content_type, open) = scrape(
        &server,
        Some(ADMIN_KEY),
        Some("application/openmetrics-text; version=1.0.0"),
    )
    .await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(open.trim_end().ends_with("# EOF"));
    assert!(open.contains("# TYPE ai_agent_requests counter"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_key_unless_configured_open() {
    let server = TestServer::start(Backend::Sqlite, Settings::default()).await;
    let (status, _, body) = scrape(&server, None, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = scrape(&server, Some("flt_nosuchkey_abc"), None).await;
    assert_eq!(status, 401);
    // Every tenant's series are there: only the platform's keys (the default tenant's, with a
    // role that reads the fleet) may read them, a viewer being enough.
    use flotilla_core::auth::Role;
    use flotilla_core::id::TenantId;
    let platform_viewer = server.create_key(Role::Viewer, TenantId::DEFAULT).await;
    let platform_agent = server.create_key(Role::Agent, TenantId::DEFAULT).await;
    let tenant_admin = server
        .create_key(Role::Admin, TenantId(uuid::Uuid::now_v7()))
        .await;
    let (status, _, body) = scrape(&server, Some(&platform_viewer), None).await;
    assert_eq!(status, 200, "{body}");
    for key in [&platform_agent, &tenant_admin] {
        let (status, _, body) = scrape(&server, Some(key), None).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("platform"), "{body}");
    }
    server.stop().await;

    let open = Settings::default().set("telemetry.metrics_public", true);
    let server = TestServer::start(Backend::Sqlite, open).await;
    let (status, _, body) = scrape(&server, None, None).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("flotilla_scheduler_leases_expired_total 0"),
        "{body}"
    );
    server.stop().await;
}

/// `GET /v1/system` shows a tenant's key the queues of its own tenant only; the platform's keys
/// see every tenant's (issue 15, "no cross-tenant data").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_shows_a_tenant_only_its_own_queues() {
    use flotilla_core::auth::Role;
    let server = TestServer::start(Backend::Sqlite, Settings::default().pool("shared")).await;
    let (a, b) = (
        server.create_tenant("a").await,
        server.create_tenant("b").await,
    );
    let (key_a, key_b) = (
        server.create_key(Role::Submitter, a).await,
        server.create_key(Role::Operator, b).await,
    );
    for _ in 0..3 {
        let (status, body) = server
            .send(
                &key_a,
                reqwest::Method::POST,
                "/v1/tasks",
                Some(json!({"agent_type": "shared", "input": {}})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let queued = |key: String| {
        let server = &server;
        async move {
            let (status, body) = server
                .send(&key, reqwest::Method::GET, "/v1/system", None)
                .await;
            assert_eq!(status, 200, "{body}");
            body["queued"].clone()
        }
    };
    assert_eq!(queued(ADMIN_KEY.to_owned()).await, json!({"shared": 3}));
    assert_eq!(queued(key_b).await, json!({}));
    server.stop().await;
}

/// The Grafana dashboard and the Prometheus rules query only metrics Flotilla exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_rules_query_exported_metrics() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/flotilla.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10);
    exprs.push(
        std::fs::read_to_string(format!("{root}/deploy/prometheus/flotilla-alerts.yaml")).unwrap(),
    );
    // Every metric family the server registers.
    let metrics = flotilla_server::telemetry::metrics::Metrics::new();
    let families = metrics.names();
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("ai_") || word.starts_with("flotilla_") {
                let base = ["_bucket", "_total"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                assert!(
                    families.iter().any(|f| *f == word || *f == base),
                    "`{word}` is not a metric Flotilla exports ({families:?})"
                );
            }
        }
    }
}
