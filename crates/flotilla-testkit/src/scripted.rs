//! A scriptable agent: an in-process HTTP server that speaks the agent contract without the SDK
//! and does whatever the test tells it, so control-plane tests can exercise every fault.
//!
//! It runs on its own thread and Tokio runtime. Stopping it drops that runtime, which drops every
//! open connection at once, as when an agent process dies: callers see the connection close,
//! not a polite answer.

use crate::HarnessError;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flotilla_core::agent::AgentStatus;
use flotilla_core::id::TaskId;
use flotilla_core::signature::{self, Signature, SignatureError};
use flotilla_core::wire::{AgentHealth, ErrorBody, ErrorDetail, ExecuteRequest, ExecuteResponse};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What the agent does with one `/execute` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer 200 with an output after `delay`.
    Succeed { delay: Duration },
    /// Answer `status` with a JSON error body.
    Fail { status: u16 },
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Never answer (until the agent stops, which drops the connection).
    Hang,
    /// Answer 422: the agent refuses the task, which must not be retried.
    Reject,
}

impl Behaviour {
    /// Succeed at once.
    pub const SUCCEED: Behaviour = Behaviour::Succeed {
        delay: Duration::ZERO,
    };
}

/// One `/execute` call as the agent received it.
#[derive(Clone, Debug)]
pub struct ReceivedCall {
    pub request: ExecuteRequest,
    /// The request headers (lower-case names), e.g. `traceparent`, `x-flotilla-signature`.
    pub headers: Vec<(String, String)>,
    /// The body exactly as received (what the signature covers).
    pub body: Vec<u8>,
    /// When it arrived, by this machine's clock.
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// What the agent did with it.
    pub behaviour: Behaviour,
}

impl ReceivedCall {
    /// The value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Verifies `x-flotilla-signature` as the SDK does, with the instance's signing secret
    /// (from its registration, or read from the store), at the time the call arrived and with
    /// the default skew.
    pub fn verify_signature(&self, signing_secret: &str) -> Result<Signature, SignatureError> {
        signature::verify(
            self.header(signature::HEADER),
            signing_secret.as_bytes(),
            &self.body,
            self.received_at,
            signature::DEFAULT_MAX_SKEW,
        )
    }
}

/// A scriptable agent on `127.0.0.1:<free port>`; stops when dropped.
#[derive(Debug)]
pub struct ScriptedAgent {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    runner: Mutex<Option<Runner>>,
}

#[derive(Debug)]
struct Runner {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

#[derive(Debug)]
struct Script {
    default: Behaviour,
    queue: VecDeque<Behaviour>,
    /// Every POST /execute, parsable or not.
    calls: usize,
    per_task: HashMap<TaskId, usize>,
    received: Vec<ReceivedCall>,
    in_flight: u32,
    capacity: u32,
    healthy: bool,
}

impl ScriptedAgent {
    /// Starts an agent that does `default` with every call (unless one is queued).
    pub fn start(default: Behaviour) -> Result<ScriptedAgent, HarnessError> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(HarnessError::Io)?;
        listener.set_nonblocking(true).map_err(HarnessError::Io)?;
        let addr = listener.local_addr().map_err(HarnessError::Io)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HarnessError::Io)?;
        let script = Arc::new(Mutex::new(Script {
            default,
            queue: VecDeque::new(),
            calls: 0,
            per_task: HashMap::new(),
            received: Vec::new(),
            in_flight: 0,
            capacity: 4,
            healthy: true,
        }));
        let router = Router::new()
            .route("/execute", post(execute))
            .route("/health", get(health))
            .with_state(Arc::clone(&script));
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("scripted-agent-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = axum::serve(listener, router) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here cancels every connection task: open connections
                // close without an answer.
                drop(runtime);
            })
            .map_err(HarnessError::Io)?;
        Ok(ScriptedAgent {
            addr,
            script,
            runner: Mutex::new(Some(Runner { stop, thread })),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What every call does from now on (queued behaviours still go first).
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.script().default = behaviour;
    }

    /// Queues behaviours for the next calls, one per call, before the default applies again.
    pub fn push_behaviours(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.script().queue.extend(behaviours);
    }

    /// Makes `GET /health` answer 503 (`false`) or 200 (`true`).
    pub fn set_healthy(&self, healthy: bool) {
        self.script().healthy = healthy;
    }

    /// The capacity reported by `GET /health` (default 4; not enforced).
    pub fn set_capacity(&self, capacity: u32) {
        self.script().capacity = capacity;
    }

    /// Every `POST /execute` received, including those with a body that did not parse.
    pub fn calls(&self) -> usize {
        self.script().calls
    }

    /// Calls received for one task.
    pub fn calls_for(&self, task_id: TaskId) -> usize {
        self.script().per_task.get(&task_id).copied().unwrap_or(0)
    }

    /// The attempt numbers received for one task, in arrival order.
    pub fn attempts_for(&self, task_id: TaskId) -> Vec<i32> {
        let script = self.script();
        script
            .received
            .iter()
            .filter(|c| c.request.task_id == task_id)
            .map(|c| c.request.attempt)
            .collect()
    }

    /// The parsed requests, in arrival order.
    pub fn requests(&self) -> Vec<ExecuteRequest> {
        self.script()
            .received
            .iter()
            .map(|c| c.request.clone())
            .collect()
    }

    /// The parsed calls with their headers and the behaviour applied.
    pub fn received(&self) -> Vec<ReceivedCall> {
        self.script().received.clone()
    }

    /// Calls being answered now (a hanging call stays in flight).
    pub fn in_flight(&self) -> u32 {
        self.script().in_flight
    }

    /// Waits until at least `n` calls arrived; false on timeout.
    pub async fn wait_for_calls(&self, n: usize, timeout: Duration) -> bool {
        let started = Instant::now();
        while self.calls() < n {
            if started.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops the server and drops every open connection; later calls are refused. Idempotent.
    pub fn stop(&self) {
        let runner = self
            .runner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(Runner { stop, thread }) = runner {
            let _ = stop.send(());
            // The thread only drops its runtime after this; it never waits on the caller.
            let _ = thread.join();
        }
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        lock(&self.script)
    }
}

impl Drop for ScriptedAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(script: &Mutex<Script>) -> MutexGuard<'_, Script> {
    // A test that panicked while holding the lock must not hide its failure behind this one.
    script.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lowers the in-flight count when a call ends, however it ends.
struct InFlight(Arc<Mutex<Script>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut script = lock(&self.0);
        script.in_flight = script.in_flight.saturating_sub(1);
    }
}

async fn execute(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = serde_json::from_slice::<ExecuteRequest>(&body);
    let behaviour = {
        let mut script = lock(&script);
        script.calls += 1;
        let Ok(request) = &parsed else {
            drop(script);
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body is not an execute request",
            );
        };
        let behaviour = script
            .queue
            .pop_front()
            .unwrap_or_else(|| script.default.clone());
        *script.per_task.entry(request.task_id).or_default() += 1;
        script.received.push(ReceivedCall {
            request: request.clone(),
            body: body.to_vec(),
            received_at: chrono::Utc::now(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            behaviour: behaviour.clone(),
        });
        script.in_flight += 1;
        behaviour
    };
    let _in_flight = InFlight(Arc::clone(&script));
    let Ok(request) = parsed else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body is not an execute request",
        );
    };

    match behaviour {
        Behaviour::Succeed { delay } => {
            tokio::time::sleep(delay).await;
            let output = json!({
                "scripted": true,
                "task_id": request.task_id,
                "attempt": request.attempt,
                "input": request.input,
            });
            (
                StatusCode::OK,
                axum::Json(ExecuteResponse {
                    output,
                    // A task may ask for model usage to be reported:
                    // `{"report_usage": [{"model": "m", "input_tokens": 1, "output_tokens": 2}]}`.
                    usage: request
                        .input
                        .get("report_usage")
                        .and_then(|u| serde_json::from_value(u.clone()).ok()),
                }),
            )
                .into_response()
        }
        Behaviour::Fail { status } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(
                status,
                "scripted_failure",
                "the scripted agent was told to fail this call",
            )
        }
        Behaviour::Garbage => (StatusCode::OK, "this is not JSON {").into_response(),
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Reject => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "task_rejected",
            "the scripted agent rejects this task",
        ),
    }
}

async fn health(State(script): State<Arc<Mutex<Script>>>) -> Response {
    let script = lock(&script);
    if !script.healthy {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            "the scripted agent was told to be unhealthy",
        );
    }
    let health = AgentHealth {
        status: AgentStatus::for_load(script.in_flight),
        load: script.in_flight,
        capacity: script.capacity,
    };
    axum::Json(health).into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
            field: None,
            request_id: None,
        },
    };
    (status, axum::Json(body)).into_response()
}
