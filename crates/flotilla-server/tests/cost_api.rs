//! Budgets, the usage ledger and the cost routes through real HTTP: budget CRUD, its validation
//! and audit, tenant isolation, usage of real gateway calls (JSON pages with a cursor, CSV), the
//! recommendation, and the spending analysis.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_client::{ListUsage, UsagePage};
use flotilla_core::auth::Role;
use flotilla_core::budget::{BudgetRequest, Enforcement, Period};
use flotilla_core::id::TenantId;
use flotilla_core::money::Money;
use flotilla_core::recommend::RecommendRequest;
use flotilla_core::tenant::Tenant;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use support::{ADMIN_KEY, Backend, Settings, TestServer, eventually};

on_both_backends!(
    budgets_are_set_listed_replaced_and_deleted_with_an_audit_trail,
    bad_budgets_are_refused_naming_the_field,
    budgets_and_usage_of_another_tenant_are_out_of_reach,
    usage_lists_gateway_calls_newest_first_with_a_cursor_and_filters,
    usage_exports_csv_with_a_header_and_one_row_per_call,
    recommend_picks_the_cheapest_model_when_only_cost_counts,
    analysis_has_a_day_per_day_and_the_model_called,
);

/// A server whose usage ledger flushes every 50 ms, so calls show up at once.
async fn server(backend: Backend) -> TestServer {
    TestServer::start(
        backend,
        Settings::default().set("gateway.usage_flush_ms", 50),
    )
    .await
}

/// Sends a request with `key`; returns the status and the JSON body (`null` when there is none).
async fn send(
    server: &TestServer,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = server
        .http
        .request(method, server.url(path))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// One chat completion through the gateway (the built-in simulated provider serves it).
async fn call_model(server: &TestServer, key: &str, model: &str) {
    let (status, body) = send(
        server,
        key,
        Method::POST,
        "/v1/chat/completions",
        Some(json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Waits until the ledger holds `n` records of the admin's tenant; returns them, newest first.
async fn usage_of(server: &TestServer, n: usize) -> UsagePage {
    eventually(
        &format!("{n} usage records"),
        Duration::from_secs(10),
        || async {
            let page = server
                .client
                .list_usage(&ListUsage::default())
                .await
                .unwrap();
            page.records.len() >= n
        },
    )
    .await;
    server
        .client
        .list_usage(&ListUsage::default())
        .await
        .unwrap()
}

fn request(limit: &str) -> BudgetRequest {
    BudgetRequest {
        limit: limit.parse().unwrap(),
        thresholds: None,
        enforcement: None,
    }
}

async fn budgets_are_set_listed_replaced_and_deleted_with_an_audit_trail(backend: Backend) {
    let server = server(backend).await;
    let client = &server.client;
    assert!(client.list_budgets(None).await.unwrap().budgets.is_empty());

    // Thresholds are sorted; defaults come from the configuration; enforcement defaults to block.
    let daily = client
        .set_budget(
            Period::Daily,
            &BudgetRequest {
                limit: "10".parse().unwrap(),
                thresholds: Some(vec![80, 50]),
                enforcement: Some(Enforcement::AlertOnly),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(daily.budget.thresholds, [50, 80]);
    assert_eq!(daily.budget.enforcement, Enforcement::AlertOnly);
    assert_eq!(daily.budget.tenant_id, TenantId::DEFAULT);
    assert_eq!(daily.spent, Money::ZERO);
    assert_eq!(
        (daily.window_start, daily.resets_at),
        Period::Daily.window(chrono::Utc::now())
    );
    let monthly = client
        .set_budget(Period::Monthly, &request("100.50"), None)
        .await
        .unwrap();
    assert_eq!(monthly.budget.thresholds, [50, 80, 90, 100]);
    assert_eq!(monthly.budget.enforcement, Enforcement::Block);
    // The wire form of the limit is an exact decimal string.
    let (status, body) = send(&server, ADMIN_KEY, Method::GET, "/v1/budgets", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["budgets"][1]["limit"], "100.5");
    assert_eq!(body["budgets"][1]["period"], "monthly");

    // Replacing keeps one budget per period.
    client
        .set_budget(Period::Daily, &request("20"), None)
        .await
        .unwrap();
    let list = client.list_budgets(None).await.unwrap().budgets;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].budget.period, Period::Daily);
    assert_eq!(list[0].budget.limit, "20".parse().unwrap());

    // A call counts against both windows at once.
    call_model(&server, ADMIN_KEY, "gpt-4o").await;
    eventually(
        "the call to count in the budgets",
        Duration::from_secs(10),
        || async {
            let list = client.list_budgets(None).await.unwrap().budgets;
            list.iter()
                .all(|b| b.spent > Money::ZERO && b.utilisation > 0.0)
        },
    )
    .await;

    // Deleting: 204, then 404 for a budget that is not there.
    client.delete_budget(Period::Daily, None).await.unwrap();
    let again = client.delete_budget(Period::Daily, None).await.unwrap_err();
    assert_eq!(
        (again.status(), again.code()),
        (Some(404), Some("not_found"))
    );
    let (status, body) = send(
        &server,
        ADMIN_KEY,
        Method::DELETE,
        "/v1/budgets/monthly",
        None,
    )
    .await;
    assert_eq!((status, body), (204, Value::Null));
    assert!(client.list_budgets(None).await.unwrap().budgets.is_empty());

    // Every change is in the audit log.
    let audit = client
        .list_audit(&[("limit", "1000".to_owned())])
        .await
        .unwrap();
    let actions: Vec<&str> = audit
        .entries
        .iter()
        .map(|e| e.action.as_str())
        .filter(|a| a.starts_with("budget."))
        .collect();
    assert_eq!(
        actions,
        [
            "budget.set",
            "budget.set",
            "budget.set",
            "budget.delete",
            "budget.delete"
        ]
    );
    server.stop().await;
}

async fn bad_budgets_are_refused_naming_the_field(backend: Backend) {
    let server = server(backend).await;
    let cases: &[(&str, Value, &str)] = &[
        ("/v1/budgets/weekly", json!({"limit": "10"}), "period"),
        ("/v1/budgets/daily", json!({"limit": "0"}), "limit"),
        ("/v1/budgets/daily", json!({"limit": "-1"}), "limit"),
        ("/v1/budgets/daily", json!({"limit": 1.5}), "limit"),
        (
            "/v1/budgets/daily",
            json!({"limit": "1.0000000000001"}),
            "limit",
        ),
        ("/v1/budgets/daily", json!({}), "limit"),
        (
            "/v1/budgets/daily",
            json!({"limit": "10", "thresholds": [0]}),
            "thresholds",
        ),
        (
            "/v1/budgets/daily",
            json!({"limit": "10", "thresholds": [50, 1001]}),
            "thresholds",
        ),
        (
            "/v1/budgets/daily",
            json!({"limit": "10", "enforcement": "nope"}),
            "enforcement",
        ),
        (
            "/v1/budgets/daily",
            json!({"limit": "10", "extra": true}),
            "extra",
        ),
    ];
    for (path, body, field) in cases {
        let (status, answer) =
            send(&server, ADMIN_KEY, Method::PUT, path, Some(body.clone())).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(
            answer["error"]["field"].as_str(),
            Some(*field),
            "{path} {body}: {answer}"
        );
    }
    let (status, answer) = send(
        &server,
        ADMIN_KEY,
        Method::DELETE,
        "/v1/budgets/yearly",
        None,
    )
    .await;
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (400, Some("period"))
    );
    // An admin naming a tenant that does not exist.
    let nobody = uuid::Uuid::now_v7();
    let (status, answer) = send(
        &server,
        ADMIN_KEY,
        Method::PUT,
        &format!("/v1/budgets/daily?tenant={nobody}"),
        Some(json!({"limit": "10"})),
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    // Nothing was stored.
    assert!(
        server
            .client
            .list_budgets(None)
            .await
            .unwrap()
            .budgets
            .is_empty()
    );
    server.stop().await;
}

async fn budgets_and_usage_of_another_tenant_are_out_of_reach(backend: Backend) {
    let server = server(backend).await;
    let b = Tenant {
        id: TenantId(uuid::Uuid::now_v7()),
        name: "tenant b".into(),
        created_at: chrono::Utc::now(),
        rate_limit: None,
    };
    assert!(server.store.create_tenant(&b).await.unwrap());
    let b_param = b.id.to_string();
    let a_operator = server.create_key(Role::Operator, TenantId::DEFAULT).await;
    let a_viewer = server.create_key(Role::Viewer, TenantId::DEFAULT).await;
    let b_operator = server.create_key(Role::Operator, b.id).await;
    let b_viewer = server.create_key(Role::Viewer, b.id).await;

    // The admin sets B's budget by naming B; it is B's alone.
    let set = server
        .client
        .set_budget(Period::Monthly, &request("5"), Some(&b_param))
        .await
        .unwrap();
    assert_eq!(set.budget.tenant_id, b.id);
    assert!(
        server
            .client
            .list_budgets(None)
            .await
            .unwrap()
            .budgets
            .is_empty()
    );
    let own = server
        .client_with(&b_viewer)
        .list_budgets(None)
        .await
        .unwrap();
    assert_eq!(own.budgets.len(), 1);
    assert!(
        server
            .client_with(&a_viewer)
            .list_budgets(None)
            .await
            .unwrap()
            .budgets
            .is_empty()
    );

    // Others may not name B, and only admins change budgets, even their own tenant's.
    for key in [&a_operator, &a_viewer] {
        for path in [
            format!("/v1/budgets?tenant={b_param}"),
            format!("/v1/usage?tenant={b_param}"),
            format!("/v1/cost/analysis?tenant={b_param}"),
        ] {
            let (status, body) = send(&server, key, Method::GET, &path, None).await;
            assert_eq!(status, 403, "{path}: {body}");
        }
    }
    for key in [&a_operator, &b_operator, &b_viewer] {
        let (status, _) = send(
            &server,
            key,
            Method::PUT,
            "/v1/budgets/daily",
            Some(json!({"limit": "1000"})),
        )
        .await;
        assert_eq!(status, 403);
        let (status, _) = send(&server, key, Method::DELETE, "/v1/budgets/monthly", None).await;
        assert_eq!(status, 403);
    }

    // B's calls are B's usage; A sees none of them, B's viewer sees them.
    call_model(&server, &b_operator, "gpt-4o").await;
    let b_client = server.client_with(&b_viewer);
    eventually(
        "B's call in B's ledger",
        Duration::from_secs(10),
        || async {
            b_client
                .list_usage(&ListUsage::default())
                .await
                .unwrap()
                .records
                .len()
                == 1
        },
    )
    .await;
    let b_usage = b_client.list_usage(&ListUsage::default()).await.unwrap();
    assert_eq!(b_usage.records[0].tenant_id, b.id);
    assert!(
        server
            .client
            .list_usage(&ListUsage::default())
            .await
            .unwrap()
            .records
            .is_empty()
    );
    let a_analysis = server.client.cost_analysis(Some(7), None).await.unwrap();
    assert_eq!(a_analysis.total, Money::ZERO);
    assert!(a_analysis.by_model.is_empty());
    // The admin reaches B's when it says so.
    let b_analysis = server
        .client
        .cost_analysis(Some(7), Some(&b_param))
        .await
        .unwrap();
    assert_eq!(b_analysis.by_model[0].name, "gpt-4o");
    assert_eq!(b_analysis.budget.unwrap().limit, "5".parse().unwrap());
    server.stop().await;
}

async fn usage_lists_gateway_calls_newest_first_with_a_cursor_and_filters(backend: Backend) {
    let server = server(backend).await;
    call_model(&server, ADMIN_KEY, "gpt-4o").await;
    call_model(&server, ADMIN_KEY, "gpt-4o").await;
    call_model(&server, ADMIN_KEY, "gemini-2.0-flash").await;
    let all = usage_of(&server, 3).await;
    assert_eq!(all.records.len(), 3);
    assert_eq!(all.next, None);
    // Newest first: the last call comes first.
    assert_eq!(all.records[0].model, "gemini-2.0-flash");
    assert!(all.records.windows(2).all(|w| w[0].id > w[1].id));
    for r in &all.records {
        assert_eq!(r.tenant_id, TenantId::DEFAULT);
        assert_eq!(r.key_id, "testadmin");
        assert_eq!(r.provider, "simulated");
        assert!(r.cost.is_some_and(|c| c > Money::ZERO), "{r:?}");
        assert!(r.tokens.input_tokens > 0 && r.tokens.output_tokens > 0);
    }

    // Pages of 2: the cursor leads to the rest, and the last page has none.
    let first = server
        .client
        .list_usage(&ListUsage {
            limit: Some(2),
            ..ListUsage::default()
        })
        .await
        .unwrap();
    assert_eq!(first.records.len(), 2);
    let cursor = first.next.clone().expect("a cursor to the next page");
    let second = server
        .client
        .list_usage(&ListUsage {
            limit: Some(2),
            before: Some(cursor),
            ..ListUsage::default()
        })
        .await
        .unwrap();
    assert_eq!(second.records.len(), 1);
    assert_eq!(second.next, None);
    let paged: Vec<_> = first.records.iter().chain(&second.records).collect();
    assert_eq!(paged, all.records.iter().collect::<Vec<_>>());

    // Filters.
    let only = |filter: ListUsage| {
        let client = server.client.clone();
        async move { client.list_usage(&filter).await.unwrap().records.len() }
    };
    assert_eq!(
        only(ListUsage {
            model: Some("gpt-4o".into()),
            ..ListUsage::default()
        })
        .await,
        2
    );
    assert_eq!(
        only(ListUsage {
            agent_type: Some("summariser".into()),
            ..ListUsage::default()
        })
        .await,
        0
    );
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .date_naive()
        .to_string();
    assert_eq!(
        only(ListUsage {
            since: Some(tomorrow.clone()),
            ..ListUsage::default()
        })
        .await,
        0
    );
    assert_eq!(
        only(ListUsage {
            until: Some(tomorrow),
            since: Some("2000-01-01T00:00:00Z".into()),
            ..ListUsage::default()
        })
        .await,
        3
    );

    // Bad parameters are 400s naming the parameter.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=many", "limit"),
        ("since=yesterday", "since"),
        ("until=2025-13-01", "until"),
        ("before=nope", "before"),
        ("task_id=nope", "task_id"),
        ("format=xml", "format"),
        ("tenant=nope", "tenant"),
    ] {
        let (status, body) = send(
            &server,
            ADMIN_KEY,
            Method::GET,
            &format!("/v1/usage?{query}"),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(
            body["error"]["field"].as_str(),
            Some(field),
            "{query}: {body}"
        );
    }
    let (status, _) = send(&server, ADMIN_KEY, Method::GET, "/v1/usage?color=red", None).await;
    assert_eq!(status, 400);
    server.stop().await;
}

async fn usage_exports_csv_with_a_header_and_one_row_per_call(backend: Backend) {
    let server = server(backend).await;
    call_model(&server, ADMIN_KEY, "gpt-4o").await;
    call_model(&server, ADMIN_KEY, "gemini-2.0-flash").await;
    let json = usage_of(&server, 2).await;

    let response = server
        .http
        .get(server.url("/v1/usage?format=csv"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = response.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header[0], "id");
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    // Rows in the same order as the JSON, with the same exact amounts.
    for (line, record) in lines[1..].iter().zip(&json.records) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), header.len(), "{line}");
        assert_eq!(fields[column("id")], record.id.to_string());
        assert_eq!(fields[column("model")], record.model);
        assert_eq!(fields[column("cost")], record.cost.unwrap().to_string());
        assert_eq!(
            fields[column("input_tokens")],
            record.tokens.input_tokens.to_string()
        );
        assert_eq!(fields[column("status")], "ok");
    }

    // The typed client: a page of one carries the cursor to the next.
    let export = server
        .client
        .usage_csv(&ListUsage {
            limit: Some(1),
            ..ListUsage::default()
        })
        .await
        .unwrap();
    assert_eq!(export.text.lines().count(), 2);
    assert_eq!(export.next, Some(json.records[0].id.to_string()));
    server.stop().await;
}

async fn recommend_picks_the_cheapest_model_when_only_cost_counts(backend: Backend) {
    let server = server(backend).await;
    let answer = server
        .client
        .recommend_model(&RecommendRequest {
            cost_priority: Some(1.0),
            quality_priority: Some(0.0),
            speed_priority: Some(0.0),
            ..RecommendRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(answer.recommended_model, "gemini-2.0-flash");
    assert!(answer.reasoning.starts_with("gemini-2.0-flash"));
    assert_eq!(
        answer.alternatives.len() + 1,
        server.config.gateway.models.len()
    );

    // Out of range: 400 naming the field; nothing within the limit: 422.
    let (status, body) = send(
        &server,
        ADMIN_KEY,
        Method::POST,
        "/v1/cost/recommend",
        Some(json!({"complexity": 2})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("complexity"))
    );
    let (status, body) = send(
        &server,
        ADMIN_KEY,
        Method::POST,
        "/v1/cost/recommend",
        Some(json!({"output_tokens": 9_223_372_036_854_775_808_u64})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("output_tokens"))
    );
    let (status, body) = send(
        &server,
        ADMIN_KEY,
        Method::POST,
        "/v1/cost/recommend",
        Some(json!({"type": "code_generator", "budget_limit": "0.000000001"})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "no_model_fits");
    assert_eq!(body["error"]["field"], "budget_limit");
    // A submitter may ask (it may call models); a viewer may not.
    let submitter = server.create_key(Role::Submitter, TenantId::DEFAULT).await;
    let viewer = server.create_key(Role::Viewer, TenantId::DEFAULT).await;
    let (status, _) = send(
        &server,
        &submitter,
        Method::POST,
        "/v1/cost/recommend",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(
        &server,
        &viewer,
        Method::POST,
        "/v1/cost/recommend",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 403);
    server.stop().await;
}

async fn analysis_has_a_day_per_day_and_the_model_called(backend: Backend) {
    let server = server(backend).await;
    server
        .client
        .set_budget(Period::Monthly, &request("100"), None)
        .await
        .unwrap();
    call_model(&server, ADMIN_KEY, "gpt-4o").await;
    let usage = usage_of(&server, 1).await;
    let cost = usage.records[0].cost.unwrap();

    let analysis = server.client.cost_analysis(Some(7), None).await.unwrap();
    let today = chrono::Utc::now().date_naive();
    assert_eq!(analysis.days, 7);
    assert_eq!(analysis.daily.len(), 7);
    assert_eq!(analysis.to, today);
    assert_eq!(analysis.daily[6].day, today);
    assert_eq!(analysis.daily[6].calls, 1);
    assert_eq!(analysis.total, cost);
    assert_eq!(analysis.by_model.len(), 1);
    assert_eq!(analysis.by_model[0].name, "gpt-4o");
    assert_eq!(analysis.by_model[0].calls, 1);
    assert_eq!(analysis.by_agent_type[0].name, "(none)");
    let budget = analysis.budget.expect("the monthly budget's use");
    assert_eq!(budget.limit, "100".parse().unwrap());
    assert_eq!(budget.used, cost);
    assert!(analysis.burn_rate_per_day > Money::ZERO);

    // The default window is 30 days; out of range is a 400 naming `days`.
    let default = server.client.cost_analysis(None, None).await.unwrap();
    assert_eq!(default.daily.len(), 30);
    let year = server.client.cost_analysis(Some(366), None).await.unwrap();
    assert_eq!(year.daily.len(), 366);
    for query in ["days=0", "days=367", "days=week"] {
        let (status, body) = send(
            &server,
            ADMIN_KEY,
            Method::GET,
            &format!("/v1/cost/analysis?{query}"),
            None,
        )
        .await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (400, Some("days")),
            "{body}"
        );
    }
    server.stop().await;
}
