//! How the API answers requests it cannot serve (docs/design.md §8): every error is JSON with a stable
//! code and, where there is one, the field at fault; every answer carries a request id, which
//! error bodies echo; nothing a client sends makes the server answer 5xx.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::auth::Role;
use flotilla_core::id::TenantId;
use reqwest::header::{CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use support::{ADMIN_KEY, Backend, Settings, TestServer, task};

const POOL: &str = "echo";
const BODY_LIMIT: i64 = 1024;

async fn server() -> TestServer {
    TestServer::start(
        Backend::Sqlite,
        Settings::default()
            .pool(POOL)
            .set("server.max_body_bytes", BODY_LIMIT)
            // These tests send many bad keys from one address on purpose; the throttling of
            // such a source has its own test (limits.rs).
            .set("rate_limits.auth_failures", "off"),
    )
    .await
}

/// An answer that has what every answer must have: a request id, a JSON body (if any), no 5xx.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
    request_id: String,
}

async fn send(request: RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    assert!(status < 500, "the server answered {status}: {text}");
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        !request_id.is_empty(),
        "no x-request-id on a {status} answer: {text}"
    );
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the {status} answer is not JSON ({e}): {text}"))
    };
    Answer {
        status,
        headers,
        body,
        request_id,
    }
}

impl Answer {
    /// Asserts an API error: its status and code, the field at fault when given, a message, a
    /// JSON content type and the request id echoed in the body.
    #[track_caller]
    fn assert_error(&self, status: u16, code: &str, field: Option<&str>) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.body["error"]["code"], code, "{}", self.body);
        if let Some(field) = field {
            assert_eq!(self.body["error"]["field"], field, "{}", self.body);
        }
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        assert_eq!(
            self.body["error"]["request_id"],
            self.request_id.as_str(),
            "{}",
            self.body
        );
        let content_type = self
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "content type `{content_type}`"
        );
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }
}

fn admin(server: &TestServer, method: Method, path: &str) -> RequestBuilder {
    server
        .http
        .request(method, server.url(path))
        .bearer_auth(ADMIN_KEY)
}

fn submit_raw(server: &TestServer, body: impl Into<reqwest::Body>) -> RequestBuilder {
    admin(server, Method::POST, "/v1/tasks")
        .header(CONTENT_TYPE, "application/json")
        .body(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_invalid_json() {
    let server = server().await;
    let deep = format!(
        r#"{{"agent_type":"echo","input":{}{}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"agent_type":"#.to_vec(),
        br#"{agent_type: "echo"}"#.to_vec(),
        b"not json".to_vec(),
        b"".to_vec(),
        b"   ".to_vec(),
        br#"{"agent_type":"echo"} {"agent_type":"echo"}"#.to_vec(),
        b"{\"agent_type\":\"\xff\xfe\"}".to_vec(),
        deep.into_bytes(),
    ];
    for body in bodies {
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(40)
            .collect::<String>();
        let answer = send(submit_raw(&server, body)).await;
        assert_eq!(answer.status, 400, "body `{shown}`: {}", answer.body);
        answer.assert_error(400, "invalid_json", None);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_and_missing_fields_name_the_field() {
    let server = server().await;
    let cases = [
        (
            json!({"agent_type": "echo", "priority": "high"}),
            "priority",
        ),
        (
            json!({"agent_type": "echo", "priority": 99_999_999_999_i64}),
            "priority",
        ),
        (json!({"agent_type": "echo", "priority": 1.5}), "priority"),
        (json!({"agent_type": 5}), "agent_type"),
        (json!({"input": {"prompt": "hi"}}), "agent_type"),
        (
            json!({"agent_type": "echo", "timeout_ms": "soon"}),
            "timeout_ms",
        ),
        (
            json!({"agent_type": "echo", "max_attempts": null, "complexity": "hard"}),
            "complexity",
        ),
    ];
    for (body, field) in cases {
        let answer = send(submit_raw(&server, body.to_string())).await;
        answer.assert_error(400, "invalid_field", Some(field));
        assert!(
            answer.message().contains(field),
            "the message names `{field}`: {}",
            answer.message()
        );
    }
    // Not an object at all: still a 400, not a crash.
    for body in ["null", "[]", "\"echo\"", "42"] {
        let answer = send(submit_raw(&server, body)).await;
        assert_eq!(answer.status, 400, "body {body}: {}", answer.body);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_refused() {
    let server = server().await;
    let answer = send(submit_raw(
        &server,
        json!({"agent_type": "echo", "colour": "red"}).to_string(),
    ))
    .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer.message().contains("colour"),
        "the message names the field: {}",
        answer.message()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_out_of_range_name_the_field() {
    let server = server().await;
    let cases = [
        (json!({"agent_type": "echo", "priority": 10}), "priority"),
        (json!({"agent_type": "echo", "priority": -1}), "priority"),
        (
            json!({"agent_type": "echo", "complexity": 1.5}),
            "complexity",
        ),
        (json!({"agent_type": "echo", "timeout_ms": 0}), "timeout_ms"),
        (
            json!({"agent_type": "echo", "max_attempts": 0}),
            "max_attempts",
        ),
        (
            json!({"agent_type": "echo", "max_attempts": 101}),
            "max_attempts",
        ),
        (json!({"agent_type": "Not Valid"}), "agent_type"),
        (json!({"agent_type": ""}), "agent_type"),
        (
            json!({"agent_type": "echo", "idempotency_key": ""}),
            "idempotency_key",
        ),
        (
            json!({"agent_type": "echo", "idempotency_key": "k".repeat(256)}),
            "idempotency_key",
        ),
    ];
    for (body, field) in cases {
        send(submit_raw(&server, body.to_string()))
            .await
            .assert_error(400, "invalid_field", Some(field));
    }
    // The body's idempotency key and the header's must agree.
    let conflicting = submit_raw(
        &server,
        json!({"agent_type": "echo", "idempotency_key": "a"}).to_string(),
    )
    .header("idempotency-key", "b");
    send(conflicting)
        .await
        .assert_error(400, "invalid_field", Some("idempotency_key"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_agent_type_is_unprocessable_and_lists_the_known_ones() {
    let server = server().await;
    let answer = send(submit_raw(
        &server,
        json!({"agent_type": "nobody"}).to_string(),
    ))
    .await;
    answer.assert_error(422, "unknown_agent_type", Some("agent_type"));
    assert!(
        answer.message().contains(POOL),
        "the message lists the known types: {}",
        answer.message()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413_in_json() {
    let server = server().await;
    let big = json!({"agent_type": "echo", "input": {"pad": "x".repeat(2048)}}).to_string();
    send(submit_raw(&server, big))
        .await
        .assert_error(413, "payload_too_large", None);
    let register = json!({"type": "echo", "url": "http://127.0.0.1:1", "capacity": 1, "metadata": {"pad": "x".repeat(2048)}});
    let answer = send(admin(&server, Method::POST, "/v1/agents").json(&register)).await;
    answer.assert_error(413, "payload_too_large", None);
    // Just under the limit is fine.
    let pad = usize::try_from(BODY_LIMIT).unwrap() - 100;
    let small = json!({"agent_type": "echo", "input": {"pad": "x".repeat(pad)}}).to_string();
    assert_eq!(send(submit_raw(&server, small)).await.status, 202);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_json_are_415() {
    let server = server().await;
    let body = json!({"agent_type": "echo"}).to_string();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let request = admin(&server, Method::POST, "/v1/tasks")
            .header(CONTENT_TYPE, content_type)
            .body(body.clone());
        send(request)
            .await
            .assert_error(415, "unsupported_media_type", None);
    }
    for content_type in [
        "application/json; charset=utf-8",
        "application/vnd.flotilla+json",
    ] {
        let request = admin(&server, Method::POST, "/v1/tasks")
            .header(CONTENT_TYPE, content_type)
            .body(body.clone());
        assert_eq!(send(request).await.status, 202, "{content_type} is JSON");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_404_and_wrong_methods_405_in_json() {
    let server = server().await;
    let id = uuid::Uuid::now_v7();
    for path in [
        "/nope".to_owned(),
        "/v1/nope".to_owned(),
        format!("/v1/tasks/{id}/nope"),
        "/v2/tasks".to_owned(),
    ] {
        send(admin(&server, Method::GET, &path))
            .await
            .assert_error(404, "not_found", None);
    }
    let wrong = [
        (Method::DELETE, "/v1/tasks".to_owned()),
        (Method::PUT, format!("/v1/tasks/{id}")),
        (Method::GET, format!("/v1/tasks/{id}/cancel")),
        (Method::PATCH, "/v1/agents".to_owned()),
        (Method::POST, "/health".to_owned()),
    ];
    for (method, path) in wrong {
        let answer = send(admin(&server, method.clone(), &path)).await;
        assert_eq!(answer.status, 405, "{method} {path}: {}", answer.body);
        answer.assert_error(405, "method_not_allowed", None);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_key_are_401_with_a_challenge() {
    let server = server().await;
    let credentials: [Option<&str>; 6] = [
        None,
        Some("Bearer flt_testadmin_wrongsecret"),
        Some("Bearer flt_nosuchkey_wrongsecret"),
        Some("Bearer not-a-key"),
        Some("Bearer "),
        Some("Basic dXNlcjpwYXNz"),
    ];
    let mut messages = Vec::new();
    for (method, path) in [
        (Method::GET, "/v1/tasks"),
        (Method::POST, "/v1/tasks"),
        (Method::GET, "/v1/agents"),
    ] {
        for credential in credentials {
            let mut request = server.http.request(method.clone(), server.url(path));
            if method == Method::POST {
                request = request.json(&json!({"agent_type": "echo"}));
            }
            if let Some(credential) = credential {
                request = request.header("authorization", credential);
            }
            let answer = send(request).await;
            answer.assert_error(401, "unauthenticated", None);
            let challenge = answer
                .headers
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer"),
                "WWW-Authenticate `{challenge}`"
            );
            if credential.is_some_and(|c| c.contains("wrongsecret")) {
                messages.push(answer.message().to_owned());
            }
        }
    }
    // A wrong secret and an unknown key id read the same: the answer does not reveal which ids exist.
    messages.dedup();
    assert_eq!(messages.len(), 1, "{messages:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_checked_per_route() {
    let server = server().await;
    let viewer = server.create_key(Role::Viewer, TenantId::DEFAULT).await;
    let agent = server.create_key(Role::Agent, TenantId::DEFAULT).await;
    let submit = |key: &str| {
        server
            .http
            .post(server.url("/v1/tasks"))
            .bearer_auth(key)
            .json(&json!({"agent_type": "echo"}))
    };
    let register = |key: &str| {
        let body = json!({"type": "echo", "url": "http://127.0.0.1:9", "capacity": 1});
        server
            .http
            .post(server.url("/v1/agents"))
            .bearer_auth(key)
            .json(&body)
    };
    send(submit(&viewer))
        .await
        .assert_error(403, "forbidden", None);
    send(register(&viewer))
        .await
        .assert_error(403, "forbidden", None);
    assert_eq!(
        send(
            server
                .http
                .get(server.url("/v1/tasks"))
                .bearer_auth(&viewer)
        )
        .await
        .status,
        200
    );
    send(submit(&agent))
        .await
        .assert_error(403, "forbidden", None);
    assert_eq!(send(register(&agent)).await.status, 201);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id_and_errors_echo_it() {
    let server = server().await;
    let health = send(server.http.get(server.url("/health"))).await;
    assert_eq!(health.status, 200);
    let other = send(server.http.get(server.url("/health"))).await;
    assert_ne!(
        health.request_id, other.request_id,
        "each request gets its own id"
    );
    let accepted = send(submit_raw(
        &server,
        json!({"agent_type": "echo"}).to_string(),
    ))
    .await;
    assert_eq!(accepted.status, 202);
    // An id sent by the caller is kept, in the header and in the error body.
    let answer =
        send(admin(&server, Method::GET, "/v1/nope").header("x-request-id", "trace-me-42")).await;
    assert_eq!(answer.request_id, "trace-me-42");
    answer.assert_error(404, "not_found", None);
    let unauthenticated = send(
        server
            .http
            .get(server.url("/v1/tasks"))
            .header("x-request-id", "who-am-i"),
    )
    .await;
    assert_eq!(unauthenticated.body["error"]["request_id"], "who-am-i");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_and_query_parameters_are_400() {
    let server = server().await;
    let id = uuid::Uuid::now_v7();
    let cases = [
        (Method::GET, "/v1/tasks/not-a-uuid".to_owned(), "id"),
        (Method::POST, "/v1/tasks/not-a-uuid/cancel".to_owned(), "id"),
        (Method::GET, "/v1/agents/42".to_owned(), "id"),
        (Method::DELETE, "/v1/agents/42".to_owned(), "id"),
        (Method::GET, format!("/v1/tasks/{id}?wait=-1"), "wait"),
        (Method::GET, format!("/v1/tasks/{id}?wait=soon"), "wait"),
        (Method::GET, format!("/v1/tasks/{id}?wait=inf"), "wait"),
        (Method::GET, format!("/v1/tasks/{id}?wait=NaN"), "wait"),
        (Method::GET, "/v1/tasks?status=bogus".to_owned(), "status"),
        (Method::GET, "/v1/tasks?limit=0".to_owned(), "limit"),
        (Method::GET, "/v1/tasks?limit=501".to_owned(), "limit"),
        (Method::GET, "/v1/tasks?limit=-1".to_owned(), "limit"),
        (
            Method::GET,
            "/v1/tasks?cursor=page-two".to_owned(),
            "cursor",
        ),
    ];
    for (method, path, field) in cases {
        let answer = send(admin(&server, method.clone(), &path)).await;
        assert_eq!(answer.status, 400, "{method} {path}: {}", answer.body);
        answer.assert_error(400, "invalid_field", Some(field));
    }
    let unknown = send(admin(&server, Method::GET, "/v1/tasks?colour=red")).await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_wait_is_capped_or_refused_never_a_server_error() {
    let server = server().await;
    // A finished task, so a capped wait returns at once.
    let submitted = server.submit(&task(POOL, json!({}))).await;
    server.client.cancel_task(submitted.id).await.unwrap();
    for wait in ["1e300", "18446744073709551616"] {
        let answer = send(admin(
            &server,
            Method::GET,
            &format!("/v1/tasks/{}?wait={wait}", submitted.id),
        ))
        .await;
        match answer.status {
            200 => assert_eq!(answer.body["status"], "cancelled"),
            _ => answer.assert_error(400, "invalid_field", Some("wait")),
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_resources_are_404() {
    let server = server().await;
    let id = uuid::Uuid::now_v7();
    for (method, path) in [
        (Method::GET, format!("/v1/tasks/{id}")),
        (Method::GET, format!("/v1/tasks/{id}?wait=0.1")),
        (Method::POST, format!("/v1/tasks/{id}/cancel")),
        (Method::GET, format!("/v1/agents/{id}")),
        (Method::DELETE, format!("/v1/agents/{id}")),
    ] {
        send(admin(&server, method, &path))
            .await
            .assert_error(404, "not_found", None);
    }
    let beat = admin(&server, Method::POST, &format!("/v1/agents/{id}/heartbeat"))
        .json(&json!({"load": 0}));
    send(beat).await.assert_error(404, "not_found", None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registrations_and_heartbeats_are_validated() {
    let server = server().await;
    let cases = [
        (
            json!({"type": "Not Valid", "url": "http://127.0.0.1:9", "capacity": 1}),
            "type",
        ),
        (
            json!({"type": "echo", "url": "http://127.0.0.1:9", "capacity": 0}),
            "capacity",
        ),
        (
            json!({"type": "echo", "url": "http://127.0.0.1:9", "capacity": -3}),
            "capacity",
        ),
        (
            json!({"type": "echo", "url": "http://127.0.0.1:9", "capacity": 1, "weight": 0}),
            "weight",
        ),
        (
            json!({"type": "echo", "url": "http://127.0.0.1:9", "capacity": 1, "metadata": [1]}),
            "metadata",
        ),
        (json!({"type": "echo", "capacity": 1}), "url"),
        // Header and log-line injection through metadata.
        (
            json!({"type": "echo", "url": "http://127.0.0.1:9", "capacity": 1,
                   "metadata": {"variant": "a\r\nX-Injected: 1"}}),
            "metadata",
        ),
        (
            json!({"type": "echo", "url": "http://127.0.0.1:9", "capacity": 1,
                   "metadata": {"bad\nkey": "v"}}),
            "metadata",
        ),
    ];
    for (body, field) in cases {
        let answer = send(admin(&server, Method::POST, "/v1/agents").json(&body)).await;
        answer.assert_error(400, "invalid_field", Some(field));
    }
    // A URL that breaks a rule is well-formed JSON the server will not act on: 422 naming
    // `url` (every rule: tests/agent_egress.rs).
    for url in ["ftp://127.0.0.1:9", "not a url"] {
        let body = json!({"type": "echo", "url": url, "capacity": 1});
        let answer = send(admin(&server, Method::POST, "/v1/agents").json(&body)).await;
        answer.assert_error(422, "invalid_agent_url", Some("url"));
    }
    // None of them registered anything.
    let agents = server.client.list_agents().await.unwrap();
    assert!(agents.agents.is_empty(), "{:?}", agents.agents);
    let id = server.register_url("http://127.0.0.1:9", POOL, 1).await;
    let path = format!("/v1/agents/{id}/heartbeat");
    for (body, field) in [
        (json!({"load": 0, "status": "failed"}), "status"),
        (json!({"load": 0, "status": "sleepy"}), "status"),
        (json!({"load": -1}), "load"),
        (json!({}), "load"),
    ] {
        send(admin(&server, Method::POST, &path).json(&body))
            .await
            .assert_error(400, "invalid_field", Some(field));
    }
    let ok = send(admin(&server, Method::POST, &path).json(&json!({"load": 0}))).await;
    assert_eq!((ok.status, &ok.body), (200, &json!({"desired": "run"})));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_the_openapi_document_need_no_key() {
    let server = server().await;
    let health = send(server.http.get(server.url("/health"))).await;
    assert_eq!((health.status, &health.body["status"]), (200, &json!("ok")));
    let ready = send(server.http.get(server.url("/ready"))).await;
    assert_eq!((ready.status, &ready.body["status"]), (200, &json!("ok")));
    let openapi = send(server.http.get(server.url("/openapi.json"))).await;
    assert_eq!(openapi.status, 200);
    assert!(
        openapi.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with('3')),
        "{}",
        openapi.body["openapi"]
    );
    let tasks = &openapi.body["paths"]["/v1/tasks"];
    assert!(
        tasks["post"].is_object() && tasks["get"].is_object(),
        "{tasks}"
    );
    assert!(openapi.body["paths"]["/v1/tasks/{id}"]["get"].is_object());
    assert!(openapi.body["paths"]["/v1/agents"]["post"].is_object());
    server.stop().await;
}
