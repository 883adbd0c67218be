//! Budgets, usage and the cost report through the CLI against the real binary: a budget is set,
//! a model is called through the gateway, and `flotilla cost report` shows the model and the
//! day's bar; `usage list --output csv` (or the older `--csv`) exports the call; `cost
//! recommend` answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN};
use flotilla_testkit::ServerProcess;
use serde_json::{Value, json};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn flotilla(server: &ServerProcess, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("FLOTILLA_URL", server.base_url())
        .env("FLOTILLA_KEY", ADMIN_KEY)
        .output()
        .expect("the binary runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test]
async fn a_budget_a_call_and_the_cost_report_through_the_cli() {
    let server = ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .env("FLOTILLA_GATEWAY__USAGE_FLUSH_MS", "50")
        .start()
        .await
        .unwrap();

    let set = ok(&flotilla(
        &server,
        &[
            "budgets",
            "set",
            "monthly",
            "100",
            "--thresholds",
            "80,50",
            "--enforcement",
            "alert_only",
        ],
    ));
    assert!(
        set.contains("monthly") && set.contains("alert_only"),
        "{set}"
    );
    let bad = flotilla(&server, &["budgets", "set", "weekly", "10"]);
    assert!(!bad.status.success());
    let bad = flotilla(&server, &["budgets", "set", "daily", "0"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("limit"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // One call through the model gateway, then wait for the ledger.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let usage = loop {
        let listed: Value = serde_json::from_str(&ok(&flotilla(
            &server,
            &["usage", "list", "--output", "json"],
        )))
        .unwrap();
        if listed["records"].as_array().is_some_and(|r| r.len() == 1) {
            break listed;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no usage record: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cost = usage["records"][0]["cost"].as_str().unwrap().to_owned();

    // The report names the model and draws today's bar.
    let report = ok(&flotilla(&server, &["cost", "report", "--days", "7"]));
    assert!(report.contains("gpt-4o"), "{report}");
    let today = chrono::Utc::now().date_naive().to_string();
    let bar = report
        .lines()
        .find(|l| l.starts_with(&today))
        .unwrap_or_else(|| panic!("no chart line for {today}:\n{report}"));
    assert!(bar.contains('█'), "{report}");
    assert!(report.contains("Monthly budget:"), "{report}");
    let json_report: Value = serde_json::from_str(&ok(&flotilla(
        &server,
        &["cost", "report", "--days", "7", "--output", "json"],
    )))
    .unwrap();
    assert_eq!(json_report["total"], cost.as_str());
    assert_eq!(json_report["daily"].as_array().unwrap().len(), 7);

    // The budget is listed with the call's spend.
    let budgets = ok(&flotilla(&server, &["budgets", "list"]));
    assert!(
        budgets.contains("monthly") && budgets.contains("$100") && budgets.contains("50%,80%"),
        "{budgets}"
    );
    let listed: Value = serde_json::from_str(&ok(&flotilla(
        &server,
        &["budgets", "list", "--output", "json"],
    )))
    .unwrap();
    assert_eq!(listed["budgets"][0]["spent"], cost.as_str());

    // The CSV export: a header and the call.
    let csv = ok(&flotilla(&server, &["usage", "list", "--output", "csv"]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("id,created_at,"), "{csv}");
    assert!(
        lines[1].contains(",gpt-4o,") && lines[1].contains(&cost),
        "{csv}"
    );
    // The older spelling `--csv` is the same export, and cannot be mixed with `--output`.
    assert_eq!(ok(&flotilla(&server, &["usage", "list", "--csv"])), csv);
    let mixed = flotilla(&server, &["usage", "list", "--csv", "--output", "json"]);
    assert_eq!(mixed.status.code(), Some(2));
    let said = String::from_utf8_lossy(&mixed.stderr);
    assert!(said.contains("cannot be used with"), "{said}");
    // A listing without a CSV form refuses `--output csv` and names the formats it has.
    let refused = flotilla(&server, &["budgets", "list", "--output", "csv"]);
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("invalid value 'csv'") && said.contains("[possible values: table, json]"),
        "{said}"
    );
    let table = ok(&flotilla(&server, &["usage", "list"]));
    assert!(table.contains("gpt-4o"), "{table}");
    assert_eq!(
        ok(&flotilla(&server, &["usage", "list", "--output", "table"])),
        table
    );

    // A recommendation where only cost counts.
    let recommended = ok(&flotilla(
        &server,
        &[
            "cost",
            "recommend",
            "--type",
            "summariser",
            "--complexity",
            "0.7",
            "--quality-priority",
            "0",
            "--speed-priority",
            "0",
            "--cost-priority",
            "1",
            "--budget-limit",
            "0.01",
        ],
    ));
    assert_eq!(
        recommended.lines().next(),
        Some("gemini-2.0-flash"),
        "{recommended}"
    );

    // Removed: the list says there are none.
    ok(&flotilla(&server, &["budgets", "delete", "monthly"]));
    let budgets = ok(&flotilla(&server, &["budgets", "list"]));
    assert!(budgets.contains("No budgets"), "{budgets}");
    assert!(
        !flotilla(&server, &["budgets", "delete", "monthly"])
            .status
            .success()
    );
}
