//! What a tenant reads of data kept for every tenant (issue 15, item 3; docs/design.md §10,
//! "Tenant isolation"): `/v1/events`, `/v1/alerts` and `/v1/alerts/history` show a tenant the
//! fleet's facts that name no tenant and its own events and alerts — never another tenant's
//! budget, usage or instances, nor token figures summed over tenants. On SQLite and PostgreSQL,
//! through the real HTTP API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::auth::Role;
use flotilla_core::budget::{Budget, Enforcement, Period};
use flotilla_core::id::TenantId;
use flotilla_core::wire::RegisterAgent;
use serde_json::{Value, json};
use std::time::Duration;
use support::{ADMIN_KEY, Backend, Settings, TestServer, eventually};

on_both_backends!(a_tenant_reads_the_fleet_and_its_own_events_and_alerts_only);

/// Alert rules by tenant (each tenant's own), by model (token figures summed over tenants: the
/// platform's) and by agent type (a fleet fact), evaluated every 100 ms.
fn settings() -> Settings {
    Settings::default()
        .pool("shared")
        .set("agents_egress.allow_loopback_for_tenants", true)
        .set("alerting.interval_ms", 100)
        .set("alerting.default_rules", false)
        .raw(
            "[[alerts]]\nname = \"tenant_tokens\"\nsignal = \"hourly_tokens\"\nby = \"tenant\"\n\
             comparison = \">\"\nthreshold = 1\nfor = \"0s\"\nseverity = \"info\"\n\
             [[alerts]]\nname = \"model_tokens\"\nsignal = \"hourly_tokens\"\nby = \"model\"\n\
             comparison = \">\"\nthreshold = 1\nfor = \"0s\"\nseverity = \"info\"\n\
             [[alerts]]\nname = \"queue\"\nsignal = \"queue_length\"\nby = \"agent_type\"\n\
             comparison = \">=\"\nthreshold = 1\nfor = \"0s\"\nseverity = \"info\"\n",
        )
}

/// A tenant with a submitter key (which calls models and submits tasks) and an operator key
/// (which registers its own instances), whose first model call crosses its budget.
async fn spender(server: &TestServer, name: &str) -> (TenantId, String, String) {
    let tenant = server.create_tenant(name).await;
    let budget = Budget {
        tenant_id: tenant,
        period: Period::Monthly,
        limit: "0.000001".parse().unwrap(),
        thresholds: vec![100],
        enforcement: Enforcement::AlertOnly,
        updated_at: chrono::Utc::now(),
    };
    server.store.put_budget(&budget).await.unwrap();
    let submitter = server.create_key(Role::Submitter, tenant).await;
    let operator = server.create_key(Role::Operator, tenant).await;
    let (status, body) = server
        .send(
            &submitter,
            reqwest::Method::POST,
            "/v1/chat/completions",
            Some(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    (tenant, submitter, operator)
}

/// The body of a GET that must succeed.
async fn read(server: &TestServer, key: &str, path: &str) -> Value {
    let (status, body) = server.send(key, reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Every message of `/v1/events` and `/v1/alerts/history`, and every alert's rule and tenant.
async fn everything_read_by(server: &TestServer, key: &str) -> (Vec<String>, Vec<String>) {
    let mut messages = Vec::new();
    for path in ["/v1/events?limit=1000", "/v1/alerts/history?limit=1000"] {
        let body = read(server, key, path).await;
        for event in body["events"].as_array().unwrap() {
            messages.push(event["message"].as_str().unwrap().to_owned());
        }
    }
    let alerts = read(server, key, "/v1/alerts").await["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{} {}", a["rule"], a["tenant"]))
        .collect();
    (messages, alerts)
}

async fn a_tenant_reads_the_fleet_and_its_own_events_and_alerts_only(backend: Backend) {
    let server = TestServer::start(backend, settings()).await;
    let (a, submitter_a, _) = spender(&server, "a").await;
    let (b, _, operator_b) = spender(&server, "b").await;
    // An instance of tenant B's own, and one of the platform's.
    let register = |agent_type: &str, port: u16| RegisterAgent {
        agent_type: agent_type.to_owned(),
        url: format!("http://127.0.0.1:{port}"),
        capacity: 1,
        weight: None,
        metadata: None,
        version: None,
    };
    let own = server
        .client_with(&operator_b)
        .register_agent(&register("b_only", 9))
        .await
        .unwrap();
    let platform = server
        .client
        .register_agent(&register("fleet_wide", 10))
        .await
        .unwrap();
    // Work queued by A on a pool with no instance: the queue alert, a fleet fact.
    let (status, body) = server
        .send(
            &submitter_a,
            reqwest::Method::POST,
            "/v1/tasks",
            Some(json!({"agent_type": "shared", "input": {}})),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    // The platform reads everything: both budgets, both tenants' alerts, the model's.
    let firing = |rule: &str, tenant: Option<TenantId>| {
        format!(
            "\"{rule}\" {}",
            tenant.map_or("null".to_owned(), |t| format!("\"{t}\""))
        )
    };
    let expected_alerts = [
        firing("tenant_tokens", Some(a)),
        firing("tenant_tokens", Some(b)),
        firing("model_tokens", None),
        firing("queue", None),
    ];
    eventually(
        "every event and alert is recorded",
        Duration::from_secs(15),
        || async {
            let (messages, alerts) = everything_read_by(&server, ADMIN_KEY).await;
            let budget_events = messages.iter().filter(|m| m.contains("budget")).count();
            let instance_events = messages.iter().filter(|m| m.contains("registered")).count();
            let transitions = messages.iter().filter(|m| m.contains(" firing: ")).count();
            budget_events >= 2
                && instance_events >= 2
                && transitions >= 4
                && expected_alerts.iter().all(|e| alerts.contains(e))
        },
    )
    .await;
    let platform_viewer = server.create_key(Role::Viewer, TenantId::DEFAULT).await;
    let (all_messages, all_alerts) = everything_read_by(&server, &platform_viewer).await;
    assert!(all_messages.iter().any(|m| m.contains(&a.to_string())));
    assert!(all_messages.iter().any(|m| m.contains(&b.to_string())));
    assert!(all_messages.iter().any(|m| m.contains("model_tokens")));
    assert!(expected_alerts.iter().all(|e| all_alerts.contains(e)));

    // Each tenant reads its own and the fleet's, with any role that may read them.
    for (me, other, own_instance) in [(a, b, None), (b, a, Some(own.id))] {
        let viewer = server.create_key(Role::Viewer, me).await;
        let (messages, alerts) = everything_read_by(&server, &viewer).await;
        let joined = messages.join("\n");
        assert!(
            !joined.contains(&other.to_string()),
            "tenant {me} reads tenant {other}'s events: {joined}"
        );
        assert!(
            !joined.contains("model_tokens"),
            "token figures summed over tenants are the platform's: {joined}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with(&format!("tenant {me} reached 100% of its monthly budget")))
        );
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with(&format!("alert tenant_tokens [tenant {me}] firing")))
        );
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("alert queue [shared] firing"))
        );
        assert!(joined.contains(&format!(
            "instance {} of the platform registered",
            platform.id
        )));
        assert_eq!(
            joined.contains(&format!("instance {} of tenant {b}", own.id)),
            own_instance.is_some(),
            "an instance's events are its owner's: {joined}"
        );
        let mut alerts = alerts;
        alerts.sort();
        let mut expected = vec![firing("tenant_tokens", Some(me)), firing("queue", None)];
        expected.sort();
        assert_eq!(alerts, expected, "its own alert and the fleet's only");
        // Events of a kind, and each page, are scoped the same way.
        let budgets = read(&server, &viewer, "/v1/events?kind=budget").await;
        let budgets = budgets["events"].as_array().unwrap();
        assert_eq!(budgets.len(), 1, "{budgets:?}");
        assert_eq!(budgets[0]["tenant"], json!(me));
    }
    server.stop().await;
}
