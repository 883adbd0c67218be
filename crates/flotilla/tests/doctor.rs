//! `flotilla doctor` against deployments broken on purpose: a healthy one, a pool with queued
//! work and no instance, a refused key, nothing listening, open metrics with the bootstrap key
//! still active, and an unreachable model provider with a spent budget. Drives the real binary against real servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN, wait_terminal};
use flotilla_core::auth::{NewKeyRequest, Role};
use flotilla_core::task::TaskStatus;
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::{AgentProcess, ServerProcess};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::Duration;

const POOL_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/code_generator_pool.toml"
);

fn doctor(url: &str, key: &str, extra: &[&str]) -> Output {
    Command::new(BIN)
        // The disk check reads this machine's real free space, which the tests do not control
        // (a CI build can take it under 10 %); its thresholds are unit-tested in flotilla-core.
        .args([
            "doctor",
            "--url",
            url,
            "--key",
            key,
            "--min-disk-free",
            "0.5",
        ])
        .args(extra)
        .env_remove("FLOTILLA_URL")
        .env_remove("FLOTILLA_KEY")
        .output()
        .expect("the binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

/// The finding named `name` in a JSON report.
fn finding<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["checks"].as_array().unwrap())
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no finding {name}: {report:#}"))
}

async fn pool_server() -> ServerProcess {
    ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .arg("--config")
        .arg(POOL_FIXTURE)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_healthy_deployment_exits_0() {
    let server = pool_server().await;
    let bootstrap = server.client().unwrap();
    // Good practice, which the security checks ask for: named keys that expire, and the
    // bootstrap key revoked.
    let expires_at = Some(chrono::Utc::now() + chrono::Duration::days(30));
    let new_key = |name: &str, role| NewKeyRequest {
        name: name.to_owned(),
        role,
        expires_at,
        rate_limit: None,
    };
    let ops = bootstrap
        .create_key(&new_key("ops", Role::Admin), None)
        .await
        .unwrap();
    let agent_key = bootstrap
        .create_key(&new_key("agents", Role::Agent), None)
        .await
        .unwrap();
    let keys = bootstrap.list_keys(None).await.unwrap();
    let bootstrap_id = keys
        .keys
        .iter()
        .find(|k| k.name == "bootstrap admin")
        .map(|k| k.id.clone())
        .unwrap();
    let admin = server.client_with_key(&ops.key).unwrap();
    admin.revoke_key(&bootstrap_id, None).await.unwrap();

    let _agent = AgentProcess::builder(BIN, "code_generator", server.base_url(), &agent_key.key)
        .args(["--median-ms", "5", "--p99-ms", "10"])
        .start()
        .await
        .unwrap();
    let task = admin
        .submit_task(&SubmitTask::new("code_generator", serde_json::json!({})))
        .await
        .unwrap();
    let done = wait_terminal(&admin, task.id, Duration::from_secs(20)).await;
    assert_eq!(done.status, TaskStatus::Succeeded);

    let out = doctor(&server.base_url(), &ops.key, &[]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("Status: healthy"), "{said}");
    assert!(said.contains("✔ Pool code_generator"), "{said}");
    assert!(said.contains("✔ Task latency: p95 task latency"), "{said}");
    // The key is never printed.
    assert!(!said.contains(&ops.key));

    let report = json(&doctor(&server.base_url(), &ops.key, &["--output", "json"]));
    assert_eq!(report["status"], "healthy");
    assert_eq!(report["exit_code"], 0);
    assert_eq!(finding(&report, "Authentication")["severity"], "ok");
    assert_eq!(finding(&report, "Budgets")["severity"], "unknown");
}

#[tokio::test]
async fn a_pool_with_queued_work_and_no_instance_is_unhealthy() {
    let server = pool_server().await;
    let client = server.client().unwrap();
    for _ in 0..2 {
        client
            .submit_task(&SubmitTask::new("code_generator", serde_json::json!({})))
            .await
            .unwrap();
    }
    let out = doctor(&server.base_url(), ADMIN_KEY, &[]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("Status: unhealthy"), "{said}");
    assert!(
        said.contains("✘ Pool code_generator") && said.contains("2 queued"),
        "{said}"
    );
    assert!(!said.contains(ADMIN_KEY));

    let out = doctor(&server.base_url(), ADMIN_KEY, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["status"], "unhealthy");
    let pool = finding(&report, "Pool code_generator");
    assert_eq!(pool["severity"], "error");
    assert!(
        pool["recommendation"]
            .as_str()
            .unwrap()
            .contains("code_generator")
    );
}

#[tokio::test]
async fn a_refused_key_is_critical_and_names_authentication() {
    let server = pool_server().await;
    let out = doctor(
        &server.base_url(),
        "flt_nosuchkey_0123456789abcdefghijklmnopqrstuvwxyz",
        &["--output", "json"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["status"], "critical");
    let auth = finding(&report, "Authentication");
    assert_eq!(auth["severity"], "critical");
    assert!(
        auth["summary"].as_str().unwrap().contains("refused"),
        "{auth}"
    );
    // Nothing else is made up: the checks that need the key say they could not run.
    assert_eq!(
        finding(&report, "Control-plane memory")["severity"],
        "unknown"
    );
    assert_eq!(finding(&report, "Secret rotation")["severity"], "unknown");
}

#[tokio::test]
async fn nothing_listening_is_critical() {
    let port = flotilla_testkit::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let out = doctor(&url, ADMIN_KEY, &[]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("Status: critical"), "{said}");
    assert!(said.contains("✘ API: nothing answers"), "{said}");

    let out = doctor(&url, ADMIN_KEY, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let report = json(&out);
    assert_eq!(report["status"], "critical");
    assert_eq!(report["exit_code"], 2);

    // The older spelling `--json` still prints the same report; it cannot be mixed with
    // `--output`, and `doctor` has no CSV form.
    let old = doctor(&url, ADMIN_KEY, &["--json"]);
    assert_eq!(old.status.code(), Some(2));
    assert_eq!(json(&old)["status"], "critical");
    let mixed = doctor(&url, ADMIN_KEY, &["--json", "--output", "table"]);
    assert_eq!(mixed.status.code(), Some(2));
    let said = String::from_utf8_lossy(&mixed.stderr);
    assert!(said.contains("cannot be used with"), "{said}");
    let csv = doctor(&url, ADMIN_KEY, &["--output", "csv"]);
    assert_eq!(csv.status.code(), Some(2));
    let said = String::from_utf8_lossy(&csv.stderr);
    assert!(
        said.contains("invalid value 'csv'") && said.contains("[possible values: table, json]"),
        "{said}"
    );
}

#[tokio::test]
async fn open_metrics_and_the_bootstrap_key_are_security_warnings() {
    let server = ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .env("FLOTILLA_TELEMETRY__METRICS_PUBLIC", "true")
        .arg("--config")
        .arg(POOL_FIXTURE)
        .start()
        .await
        .unwrap();
    let out = doctor(&server.base_url(), ADMIN_KEY, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["status"], "warning");
    for name in ["Metrics access", "Bootstrap key", "Key expiry"] {
        assert_eq!(finding(&report, name)["severity"], "warning", "{name}");
    }
    assert!(
        finding(&report, "Key expiry")["summary"]
            .as_str()
            .unwrap()
            .contains("bootstrap admin")
    );
}

#[tokio::test]
async fn an_unreachable_provider_and_a_spent_budget_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flotilla.toml");
    std::fs::write(
        &config,
        "[gateway]\nusage_flush_ms = 50\n\n[providers.dead]\nbase_url = \"http://127.0.0.1:9/v1\"\nconnect_timeout_ms = 500\n\n[[models]]\nname = \"dead-model\"\nprovider = \"dead\"\nprices = { input = 1, output = 1 }\n",
    )
    .unwrap();
    let server = ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .arg("--config")
        .arg(&config)
        .start()
        .await
        .unwrap();
    let admin = server.client().unwrap();
    // A budget that lets calls through but is spent after the first one.
    admin
        .set_budget(
            flotilla_core::budget::Period::Monthly,
            &flotilla_core::budget::BudgetRequest {
                limit: "0.000001".parse().unwrap(),
                thresholds: None,
                enforcement: Some(flotilla_core::budget::Enforcement::AlertOnly),
            },
            None,
        )
        .await
        .unwrap();
    let status = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    let out = doctor(&server.base_url(), ADMIN_KEY, &["--output", "json"]);
    let report = json(&out);
    let providers = finding(&report, "Model providers");
    // One of two providers (the built-in simulated one answers) is down: a warning naming it.
    assert_eq!(providers["severity"], "warning", "{providers}");
    assert!(providers.to_string().contains("dead"), "{providers}");
    let budget = report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["checks"].as_array().unwrap())
        .find(|c| c["name"].as_str().unwrap().starts_with("Budget "))
        .unwrap_or_else(|| panic!("no budget finding: {report:#}"));
    assert_eq!(budget["severity"], "error", "{budget}");
    assert!(out.status.code().unwrap() >= 1, "{}", text(&out));
}
