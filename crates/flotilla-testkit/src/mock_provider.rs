//! A mock OpenAI-compatible model provider (`POST /v1/chat/completions`) on 127.0.0.1, for tests
//! and benchmarks of the model gateway. What it does is chosen by the request's `model` (the
//! upstream name a gateway model maps to):
//!
//! - `ok` (or anything else): a fixed answer with usage (10 prompt, 5 completion tokens; 7 and 3
//!   of them cached and reasoning for `cached`), streamed when asked, with the usage chunk when
//!   `stream_options.include_usage` is set;
//! - `fail-<status>`: answers that status with an OpenAI-shaped error;
//! - `slow-<ms>`: waits that long before answering;
//! - `no-usage`: like `ok` without any usage;
//! - `heavy-<n>`: like `ok`, but reports `n` prompt tokens whatever the request held (a provider
//!   that counts more than the gateway could foresee);
//! - `malformed`: a stream that breaks with a non-JSON event after two good chunks;
//! - `endless`: a stream that sends a chunk every 20 ms until the client goes away.
//!
//! Every request is recorded (body and headers), so tests can see what the gateway sent.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request the mock received.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    pub body: Value,
    pub authorization: Option<String>,
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<ReceivedRequest>>,
    record: bool,
    /// Streams of `endless` still being written.
    open_streams: AtomicU64,
    /// `GET /v1/models` requests (provider probes).
    model_lists: AtomicU64,
}

/// A running mock provider; stops when dropped.
pub struct MockProvider {
    /// `http://127.0.0.1:<port>/v1`, the `base_url` of a provider.
    pub base_url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl MockProvider {
    /// Starts the mock on a free port, recording every request.
    pub async fn start() -> std::io::Result<MockProvider> {
        MockProvider::start_with(true).await
    }

    /// Starts the mock; `record: false` keeps no copies (benchmarks).
    pub async fn start_with(record: bool) -> std::io::Result<MockProvider> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            record,
            ..Shared::default()
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/v1/models", axum::routing::get(models))
            .with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(MockProvider {
            base_url: format!("http://{addr}/v1"),
            shared,
            stop: Some(stop),
        })
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// `GET /v1/models` requests received (how often the provider was probed).
    pub fn model_lists(&self) -> u64 {
        self.shared.model_lists.load(Ordering::SeqCst)
    }

    /// `endless` streams still being written (0 once the gateway cancelled them).
    pub fn open_streams(&self) -> u64 {
        self.shared.open_streams.load(Ordering::SeqCst)
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The model list (what a probe reads): empty.
async fn models(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    shared.model_lists.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({"object": "list", "data": []}))
}

fn usage(model: &str) -> Value {
    if let Some(n) = model
        .strip_prefix("heavy-")
        .and_then(|n| n.parse::<u64>().ok())
    {
        return json!({"prompt_tokens": n, "completion_tokens": 5, "total_tokens": n + 5});
    }
    if model == "cached" {
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
               "prompt_tokens_details": {"cached_tokens": 7},
               "completion_tokens_details": {"reasoning_tokens": 3}})
    } else {
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    }
}

fn chunk(model: &str, content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
    )
}

async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not json").into_response();
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("ok")
        .to_owned();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if shared.record
        && let Ok(mut r) = shared.received.lock()
    {
        let h = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        r.push(ReceivedRequest {
            body: body.clone(),
            authorization: h("authorization"),
            traceparent: h("traceparent"),
        });
    }
    if let Some(status) = model
        .strip_prefix("fail-")
        .and_then(|s| s.parse::<u16>().ok())
    {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (
            status,
            axum::Json(json!({"error": {"message": format!("mock failure {}", status.as_u16()), "type": "api_error"}})),
        )
            .into_response();
    }
    if let Some(ms) = model
        .strip_prefix("slow-")
        .and_then(|s| s.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if stream {
        let events: Vec<String> = match model.as_str() {
            "malformed" => vec![
                chunk(&model, "one"),
                chunk(&model, " two"),
                "data: {oops\n\n".to_owned(),
            ],
            "endless" => {
                let shared = shared.clone();
                let model = model.clone();
                shared.open_streams.fetch_add(1, Ordering::SeqCst);
                let guard = OpenStream(shared);
                let s = futures_unfold(model, guard);
                return sse(Body::from_stream(s));
            }
            _ => {
                let mut e = vec![
                    chunk(&model, "Hello"),
                    chunk(&model, " from"),
                    chunk(&model, " the mock"),
                ];
                if include_usage && model != "no-usage" {
                    e.push(format!(
                        "data: {}\n\n",
                        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
                               "model": model, "choices": [], "usage": usage(&model)})
                    ));
                }
                e.push("data: [DONE]\n\n".to_owned());
                e
            }
        };
        let body = Body::from_stream(tokio_stream_iter(events));
        return sse(body);
    }
    let mut answer = json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock"}, "finish_reason": "stop"}],
    });
    if model != "no-usage" {
        answer["usage"] = usage(&model);
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
}

fn sse(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

/// Decrements the open-stream count when the stream is dropped (the client went away).
struct OpenStream(Arc<Shared>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

fn tokio_stream_iter(
    events: Vec<String>,
) -> impl futures_core::Stream<Item = Result<String, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, Infallible>>(events.len().max(1));
    for e in events {
        let _ = tx.try_send(Ok(e));
    }
    drop(tx);
    ReceiverStream(rx)
}

fn futures_unfold(
    model: String,
    guard: OpenStream,
) -> impl futures_core::Stream<Item = Result<String, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, Infallible>>(1);
    tokio::spawn(async move {
        let _guard = guard;
        loop {
            if tx.send(Ok(chunk(&model, "tick"))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    ReceiverStream(rx)
}

/// A receiver as a stream (without a dependency on tokio-stream).
struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}
