//! The client against an in-process fake of API v1: paths, methods, query strings, auth and the
//! mapping of error answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use flotilla_client::{Client, ClientError, ListTasks};
use flotilla_core::id::{AgentId, TaskId, TenantId};
use flotilla_core::task::{Task, TaskStatus};
use flotilla_core::wire::{
    Desired, Heartbeat, HeartbeatAck, RegisterAgent, Registered, SubmitTask, TaskPage,
};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

#[derive(Default)]
struct Seen {
    auth: Vec<Option<String>>,
    queries: Vec<Option<String>>,
}

type Shared = Arc<Mutex<Seen>>;

fn task(id: TaskId, status: TaskStatus) -> Task {
    let now = chrono::Utc::now();
    Task {
        id,
        tenant_id: TenantId::DEFAULT,
        agent_type: "code_generator".into(),
        input: json!({}),
        priority: 5,
        complexity: None,
        idempotency_key: None,
        timeout_ms: 1000,
        max_attempts: 3,
        status,
        attempt: 0,
        output: None,
        error: None,
        usage: None,
        agent_id: None,
        trace_id: None,
        created_at: now,
        updated_at: now,
        not_before: now,
        started_at: None,
        finished_at: None,
        attempts: Vec::new(),
    }
}

fn record(seen: &Shared, headers: &HeaderMap, query: Option<String>) {
    let mut seen = seen.lock().unwrap();
    seen.auth.push(
        headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
    );
    seen.queries.push(query);
}

async fn fake_api() -> (String, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/ready", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "store unreachable") }))
        .route(
            "/v1/tasks",
            post(|State(seen): State<Shared>, headers: HeaderMap, axum::Json(body): axum::Json<SubmitTask>| async move {
                record(&seen, &headers, None);
                let mut t = task(TaskId::from_uuid(Uuid::now_v7()), TaskStatus::Queued);
                t.agent_type = body.agent_type;
                (StatusCode::ACCEPTED, axum::Json(t))
            })
            .get(|State(seen): State<Shared>, headers: HeaderMap, RawQuery(q): RawQuery| async move {
                record(&seen, &headers, q);
                axum::Json(TaskPage { tasks: vec![], next_cursor: Some("c2".into()) })
            }),
        )
        .route(
            "/v1/tasks/{id}",
            get(|State(seen): State<Shared>, headers: HeaderMap, Path(id): Path<TaskId>, RawQuery(q): RawQuery| async move {
                record(&seen, &headers, q.clone());
                if q.is_some() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                if id.as_uuid().is_nil() {
                    let body = json!({"error": {"code": "not_found", "message": "no such task", "field": "id"}});
                    return (StatusCode::NOT_FOUND, [("x-request-id", "req-42")], axum::Json(body)).into_response();
                }
                axum::Json(task(id, TaskStatus::Succeeded)).into_response()
            }),
        )
        .route(
            "/v1/tasks/{id}/cancel",
            post(|Path(id): Path<TaskId>| async move { axum::Json(task(id, TaskStatus::Cancelled)) }),
        )
        .route(
            "/v1/agents",
            post(|axum::Json(body): axum::Json<RegisterAgent>| async move {
                assert_eq!(body.capacity, 3);
                axum::Json(Registered {
                    id: AgentId::from_uuid(Uuid::now_v7()),
                    heartbeat_interval_s: 5,
                    signing_secret: "s".into(),
                })
            }),
        )
        .route(
            "/v1/agents/{id}/heartbeat",
            post(|axum::Json(beat): axum::Json<Heartbeat>| async move {
                let desired = if beat.load > 10 { Desired::Drain } else { Desired::Run };
                axum::Json(HeartbeatAck { desired })
            }),
        )
        .route("/garbage", get(|| async { "not json" }))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/"), seen)
}

#[tokio::test]
async fn sends_the_bearer_key_and_decodes_answers() {
    let (url, seen) = fake_api().await;
    let client = Client::new(&url, Some("flt_abc_secret".into())).unwrap();

    let submitted = client
        .submit_task(&SubmitTask::new("security_scanner", json!({"x": 1})))
        .await
        .unwrap();
    assert_eq!(submitted.agent_type, "security_scanner");
    assert_eq!(submitted.status, TaskStatus::Queued);
    assert_eq!(
        seen.lock().unwrap().auth[0].as_deref(),
        Some("Bearer flt_abc_secret")
    );

    let fetched = client.get_task(submitted.id, None).await.unwrap();
    assert_eq!(fetched.status, TaskStatus::Succeeded);
    let cancelled = client.cancel_task(submitted.id).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);

    assert_eq!(client.health().await.unwrap().status, "ok");
}

#[tokio::test]
async fn key_never_shows_in_debug_output() {
    let client = Client::new("http://127.0.0.1:1", Some("flt_abc_topsecret".into())).unwrap();
    let debug = format!("{client:?}");
    assert!(!debug.contains("topsecret"), "{debug}");
    assert!(debug.contains("authenticated: true"));
}

#[tokio::test]
async fn long_poll_sends_fractional_seconds_and_outlasts_the_default_timeout() {
    let (url, seen) = fake_api().await;
    // A request timeout shorter than the server's hold must still be extended by the wait.
    let client = Client::new(&url, None)
        .unwrap()
        .with_request_timeout(Duration::from_millis(100));
    let id = TaskId::from_uuid(Uuid::now_v7());
    let fetched = client
        .get_task(id, Some(Duration::from_millis(2500)))
        .await
        .unwrap();
    assert_eq!(fetched.id, id);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.queries.last().unwrap().as_deref(), Some("wait=2.5"));
    assert_eq!(seen.auth.last().unwrap(), &None);
}

#[tokio::test]
async fn list_filters_become_query_parameters() {
    let (url, seen) = fake_api().await;
    let client = Client::new(&url, None).unwrap();
    let filter = ListTasks {
        status: Some(TaskStatus::TimedOut),
        agent_type: Some("code generator".into()),
        cursor: Some("abc".into()),
        limit: Some(20),
    };
    let page = client.list_tasks(&filter).await.unwrap();
    assert_eq!(page.next_cursor.as_deref(), Some("c2"));
    client.list_tasks(&ListTasks::default()).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.queries[0].as_deref(),
        Some("status=timed_out&agent_type=code+generator&cursor=abc&limit=20")
    );
    assert_eq!(seen.queries[1], None);
}

#[tokio::test]
async fn agent_calls_round_trip() {
    let (url, _) = fake_api().await;
    let client = Client::new(&url, Some("k".into())).unwrap();
    let registered = client
        .register_agent(&RegisterAgent {
            agent_type: "code_generator".into(),
            url: "http://127.0.0.1:9".into(),
            capacity: 3,
            weight: None,
            metadata: None,
            version: None,
        })
        .await
        .unwrap();
    assert_eq!(registered.heartbeat_interval_s, 5);
    let ack = client
        .heartbeat(
            registered.id,
            &Heartbeat {
                load: 11,
                status: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(ack.desired, Desired::Drain);
}

#[tokio::test]
async fn errors_keep_the_server_body_or_synthesise_one() {
    let (url, _) = fake_api().await;
    let client = Client::new(&url, None).unwrap();

    let err = client
        .get_task(TaskId::from_uuid(Uuid::nil()), None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    let ClientError::Api { error, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(error.code, "not_found");
    assert_eq!(error.field.as_deref(), Some("id"));
    assert_eq!(error.request_id.as_deref(), Some("req-42"));

    let err = client.ready().await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.code(), Some("http_503"));
    assert!(err.to_string().contains("store unreachable"));

    // The fake has no `GET /v1/agents`: axum answers 405 with an empty body.
    let err = client.list_agents().await.unwrap_err();
    assert_eq!(err.status(), Some(405));
    assert_eq!(err.code(), Some("http_405"));
    assert!(err.to_string().contains("Method Not Allowed"), "{err}");
}

#[tokio::test]
async fn unreachable_servers_are_transport_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = Client::new(&url, None).unwrap().health().await.unwrap_err();
    assert!(err.is_transport(), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    assert_eq!(err.status(), None);
}

#[test]
fn bad_urls_are_refused() {
    assert!(matches!(
        Client::new("127.0.0.1:8080", None),
        Err(ClientError::InvalidUrl(_))
    ));
    assert!(matches!(
        Client::new("ftp://host", None),
        Err(ClientError::InvalidUrl(_))
    ));
    assert!(matches!(
        Client::new("http://host/?a=b", None),
        Err(ClientError::InvalidUrl(_))
    ));
    assert!(matches!(
        Client::new("http://host", Some("bad\nkey".into())),
        Err(ClientError::InvalidKey(_))
    ));
    assert_eq!(
        Client::new("http://host:1/api/", None).unwrap().base_url(),
        "http://host:1/api"
    );
}
