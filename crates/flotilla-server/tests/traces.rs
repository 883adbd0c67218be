//! Task traces over OTLP/HTTP (docs/design.md §11): an in-process OTLP receiver (an axum server
//! accepting `POST /v1/traces`) gets the spans of a task's life, all in the task's stored trace,
//! and the agent's `traceparent` names the `agent.execute` span.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use flotilla_core::task::TaskStatus;
use flotilla_testkit::{Behaviour, ScriptedAgent};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use support::{ADMIN_KEY, Backend, Settings, TestServer};

const ECHO: &str = "echo";

/// One span as the receiver decoded it (ids in lower-case hex).
#[derive(Clone, Debug)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// An OTLP/HTTP receiver on `127.0.0.1:0` that decodes protobuf and JSON exports.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    content_types: Arc<Mutex<Vec<String>>>,
    headers: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let receiver = Receiver::default();
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, addr)
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

async fn export(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Vec<u8> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    receiver.headers.lock().unwrap().extend(
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned())),
    );
    let spans = if content_type.starts_with("application/json") {
        decode_json(&body)
    } else {
        decode_protobuf(&body)
    };
    receiver.spans.lock().unwrap().extend(spans);
    receiver.content_types.lock().unwrap().push(content_type);
    // An empty ExportTraceServiceResponse.
    Vec::new()
}

fn decode_protobuf(body: &[u8]) -> Vec<ReceivedSpan> {
    let request = ExportTraceServiceRequest::decode(body).unwrap();
    let mut out = Vec::new();
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    name: span.name,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent_span_id: hex::encode(span.parent_span_id),
                    attributes: span
                        .attributes
                        .into_iter()
                        .map(|kv| {
                            let value = kv.value.and_then(|v| v.value).map(|v| {
                                use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
                                match v {
                                    V::StringValue(s) => s,
                                    V::IntValue(i) => i.to_string(),
                                    other => format!("{other:?}"),
                                }
                            });
                            (kv.key, value.unwrap_or_default())
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

fn decode_json(body: &[u8]) -> Vec<ReceivedSpan> {
    let request: Value = serde_json::from_slice(body).unwrap();
    let mut out = Vec::new();
    let empty = Vec::new();
    for resource in request["resourceSpans"].as_array().unwrap_or(&empty) {
        for scope in resource["scopeSpans"].as_array().unwrap_or(&empty) {
            for span in scope["spans"].as_array().unwrap_or(&empty) {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_ascii_lowercase();
                out.push(ReceivedSpan {
                    name: text(&span["name"]),
                    trace_id: text(&span["traceId"]),
                    span_id: text(&span["spanId"]),
                    parent_span_id: text(&span["parentSpanId"]),
                    attributes: span["attributes"]
                        .as_array()
                        .unwrap_or(&empty)
                        .iter()
                        .map(|kv| {
                            let value = &kv["value"];
                            let value = value["stringValue"]
                                .as_str()
                                .map(str::to_owned)
                                .or_else(|| value["intValue"].as_str().map(str::to_owned))
                                .or_else(|| value["intValue"].as_i64().map(|i| i.to_string()))
                                .unwrap_or_else(|| value.to_string());
                            (text(&kv["key"]), value)
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

fn settings(receiver: SocketAddr, protocol: &str) -> Settings {
    Settings::default().pool(ECHO).raw(&format!(
        "[telemetry.otlp]\nendpoint = \"http://{receiver}\"\nprotocol = \"{protocol}\"\n\
         service_name = \"flotilla-test\"\nheaders = {{ x-scope-orgid = \"tenant-a\" }}\n"
    ))
}

/// Submits `body` with an optional `traceparent` and returns the task's id.
async fn submit(server: &TestServer, traceparent: Option<&str>) -> flotilla_core::id::TaskId {
    let mut request = server
        .http
        .post(server.url("/v1/tasks"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"agent_type": ECHO, "input": {"q": "secret-input"}}));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    response
        .json::<flotilla_core::task::Task>()
        .await
        .unwrap()
        .id
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_spans_reach_the_receiver_in_the_submitted_trace() {
    let (receiver, addr) = Receiver::start().await;
    let server = TestServer::start(Backend::Sqlite, settings(addr, "http/protobuf")).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let agent_id = server.register(&agent, ECHO, 2).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let id = submit(&server, Some(&format!("00-{trace}-{parent}-01"))).await;
    let task = server.finish(id).await;
    assert_eq!(task.status, TaskStatus::Succeeded);
    assert_eq!(task.trace_id.as_deref(), Some(trace));
    // A model call made in the same trace (as an agent does with the traceparent it received).
    let answer = server
        .http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_KEY)
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .json(&serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // Shutdown flushes the batch exporter.
    server.stop().await;

    let spans = receiver.spans();
    for span in &spans {
        assert_eq!(span.trace_id, trace, "{span:?} is not in the task's trace");
        assert!(
            span.attributes
                .iter()
                .all(|(_, v)| !v.contains("secret-input")),
            "{span:?} carries the task's input"
        );
    }
    let submit = named(&spans, "task.submit");
    assert_eq!(submit.len(), 1, "{spans:#?}");
    let submit = submit[0];
    assert_eq!(
        submit.parent_span_id, parent,
        "the submitter's span is the parent"
    );
    assert_eq!(submit.attribute("task.id"), Some(id.to_string().as_str()));

    let attempt = named(&spans, "task.attempt");
    assert_eq!(attempt.len(), 1, "{spans:#?}");
    let attempt = attempt[0];
    assert_eq!(attempt.parent_span_id, submit.span_id);
    assert_eq!(attempt.attribute("task.attempt"), Some("1"));
    assert_eq!(
        attempt.attribute("agent.id"),
        Some(agent_id.to_string().as_str())
    );
    assert_eq!(attempt.attribute("agent.type"), Some(ECHO));
    assert_eq!(attempt.attribute("attempt.outcome"), Some("success"));

    let execute = named(&spans, "agent.execute");
    assert_eq!(execute.len(), 1, "{spans:#?}");
    let execute = execute[0];
    assert_eq!(execute.parent_span_id, attempt.span_id);
    assert_eq!(execute.attribute("http.response.status_code"), Some("200"));
    let calls = agent.received();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].header("traceparent"),
        Some(format!("00-{trace}-{}-01", execute.span_id).as_str()),
        "the agent's parent span is agent.execute"
    );

    let chat = named(&spans, "gateway.chat");
    assert_eq!(chat.len(), 1, "{spans:#?}");
    assert_eq!(
        chat[0].parent_span_id, parent,
        "the caller's span is the parent"
    );
    assert_eq!(chat[0].attribute("gen_ai.response.model"), Some("gpt-4o"));
    assert_eq!(chat[0].attribute("usage.status"), Some("ok"));

    let complete = named(&spans, "task.complete");
    assert_eq!(complete.len(), 1, "{spans:#?}");
    assert_eq!(complete[0].parent_span_id, submit.span_id);
    assert_eq!(complete[0].attribute("task.status"), Some("succeeded"));

    let content_types = receiver.content_types.lock().unwrap().clone();
    assert!(
        content_types.iter().all(|c| c == "application/x-protobuf"),
        "{content_types:?}"
    );
    let headers = receiver.headers.lock().unwrap().clone();
    assert!(headers.contains(&("x-scope-orgid".to_owned(), "tenant-a".to_owned())));
    agent.stop();
}

/// A task without `traceparent` gets a trace of its own; a retry adds a `task.queued` and a
/// second `task.attempt` to it. Two servers run in this process at once, each with its own
/// receiver: spans go to the server's own endpoint only (the tracer is per server, not global).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_exports_its_own_tasks_over_json_with_retries_in_one_trace() {
    let (receiver_a, addr_a) = Receiver::start().await;
    let (receiver_b, addr_b) = Receiver::start().await;
    let server_a = TestServer::start(Backend::Sqlite, settings(addr_a, "http/json")).await;
    let server_b = TestServer::start(Backend::Sqlite, settings(addr_b, "http/protobuf")).await;
    let agent_a = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    agent_a.push_behaviours([Behaviour::Fail { status: 503 }]);
    let agent_b = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    server_a.register(&agent_a, ECHO, 1).await;
    server_b.register(&agent_b, ECHO, 1).await;

    let id_a = submit(&server_a, None).await;
    let id_b = submit(&server_b, None).await;
    let task_a = server_a.finish(id_a).await;
    let task_b = server_b.finish(id_b).await;
    assert_eq!(task_a.status, TaskStatus::Succeeded);
    assert_eq!(task_a.attempt, 2);
    server_a.stop().await;
    server_b.stop().await;

    let trace_a = task_a.trace_id.unwrap();
    let trace_b = task_b.trace_id.unwrap();
    let spans_a = receiver_a.spans();
    let spans_b = receiver_b.spans();
    assert!(
        spans_a.iter().all(|s| s.trace_id == trace_a),
        "{spans_a:#?}"
    );
    assert!(
        spans_b.iter().all(|s| s.trace_id == trace_b),
        "{spans_b:#?}"
    );
    assert!(
        receiver_a
            .content_types
            .lock()
            .unwrap()
            .iter()
            .all(|c| c.starts_with("application/json"))
    );

    let submit = named(&spans_a, "task.submit");
    assert_eq!(submit.len(), 1, "{spans_a:#?}");
    assert_eq!(
        submit[0].parent_span_id, "",
        "no submitter span: task.submit is the root"
    );
    let attempts = named(&spans_a, "task.attempt");
    assert_eq!(attempts.len(), 2, "{spans_a:#?}");
    let mut outcomes: Vec<_> = attempts
        .iter()
        .map(|s| {
            (
                s.attribute("task.attempt").unwrap_or_default().to_owned(),
                s.attribute("attempt.outcome")
                    .unwrap_or_default()
                    .to_owned(),
                s.attribute("attempt.next").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            ("1".to_owned(), "status".to_owned(), "retry".to_owned()),
            ("2".to_owned(), "success".to_owned(), "succeeded".to_owned())
        ]
    );
    // The retry waited in the queue after its backoff.
    let queued = named(&spans_a, "task.queued");
    assert!(
        queued
            .iter()
            .any(|s| s.attribute("task.attempt") == Some("2")),
        "{spans_a:#?}"
    );
    assert_eq!(named(&spans_a, "agent.execute").len(), 2);
    assert_eq!(named(&spans_a, "task.complete").len(), 1);
    // Agents were told the agent.execute span of their own call.
    let executes: Vec<_> = named(&spans_a, "agent.execute")
        .iter()
        .map(|s| format!("00-{trace_a}-{}-01", s.span_id))
        .collect();
    for call in agent_a.received() {
        let traceparent = call.header("traceparent").unwrap().to_owned();
        assert!(
            executes.contains(&traceparent),
            "{traceparent} not in {executes:?}"
        );
    }
    assert_eq!(named(&spans_b, "task.complete").len(), 1, "{spans_b:#?}");
    agent_a.stop();
    agent_b.stop();
}

/// A receiver that is down loses spans, never tasks: the task runs, and shutdown's flush gives
/// up after its timeout instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_receiver_loses_spans_not_tasks() {
    // A port that was free a moment ago: nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let server = TestServer::start(
        Backend::Sqlite,
        settings(closed, "http/protobuf").set("telemetry.otlp.timeout_ms", 300),
    )
    .await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    server.register(&agent, ECHO, 1).await;
    let id = submit(&server, None).await;
    assert_eq!(server.finish(id).await.status, TaskStatus::Succeeded);
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "shutdown took {:?}",
        started.elapsed()
    );
    agent.stop();
}
