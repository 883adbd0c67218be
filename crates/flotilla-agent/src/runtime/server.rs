//! The HTTP side of the agent contract: `POST /execute` and `GET /health`.

use super::AgentRuntimeError;
use super::gate::{Gate, Refusal};
use super::signature::{Refused, Verifier};
use crate::{Agent, AgentError};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flotilla_core::agent::AgentStatus;
use flotilla_core::wire::{AgentHealth, ErrorBody, ErrorDetail, ExecuteRequest};
use flotilla_tls::ConnectionLimits;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the handlers share.
struct AppState<A> {
    agent: Arc<A>,
    gate: Arc<Gate>,
    verifier: Arc<Verifier>,
}

impl<A> Clone for AppState<A> {
    fn clone(&self) -> Self {
        AppState {
            agent: Arc::clone(&self.agent),
            gate: Arc::clone(&self.gate),
            verifier: Arc::clone(&self.verifier),
        }
    }
}

pub(crate) fn router<A: Agent>(agent: Arc<A>, gate: Arc<Gate>, verifier: Arc<Verifier>) -> Router {
    Router::new()
        .route("/execute", post(execute::<A>))
        .route("/health", get(health::<A>))
        .with_state(AppState {
            agent,
            gate,
            verifier,
        })
}

/// Serves until `stop` is cancelled, then lets in-flight requests finish; over TLS when `tls`
/// is given (its handshakes run on their own tasks, which stop with the server). Connections get
/// the same bounds as the control plane's API by default (`flotilla_tls::ConnectionLimits`): a
/// header-read and idle timeout, and caps on connections and handshakes in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) -> Result<(), AgentRuntimeError> {
    let Some(tls) = tls else {
        // Answers go out at once (no Nagle delay on keep-alive connections, docs/design.md §7).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        flotilla_tls::serve(listener, router, limits, stop).await;
        return Ok(());
    };
    let handshakes = TaskTracker::new();
    let listener = super::tls::listen(listener, tls, &limits, &handshakes, stop.clone())
        .map_err(AgentRuntimeError::Server)?;
    flotilla_tls::serve(listener, router, limits, stop).await;
    handshakes.close();
    handshakes.wait().await;
    Ok(())
}

/// `POST /execute`: one attempt of a task.
///
/// The request signature (`x-flotilla-signature`, docs/design.md §6) is verified first, on the raw
/// body before it is parsed, with the signing secret of the current registration; an unsigned,
/// wrongly signed, stale or replayed request gets 401 and is never run.
async fn execute<A: Agent>(
    State(state): State<AppState<A>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signature = headers
        .get(flotilla_core::signature::HEADER)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Err(refused) = state.verifier.check(signature, &body, chrono::Utc::now()) {
        tracing::warn!(reason = refused.code(), error = %refused, "Refused an /execute request.");
        let status = match refused {
            Refused::WindowFull => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        return error(status, refused.code(), refused.to_string(), None);
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(&body);
    let request: ExecuteRequest = match serde_path_to_error::deserialize(deserializer) {
        Ok(request) => request,
        Err(e) => {
            let path = e.path().to_string();
            let field = (path != ".").then_some(path);
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("The body is not a valid execute request: {}", e.inner()),
                field,
            );
        }
    };

    let _permit = match state.gate.admit() {
        Ok(permit) => permit,
        Err(Refusal::Draining) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "This instance is draining and takes no new tasks; send the task elsewhere.".into(),
                None,
            );
        }
        Err(Refusal::AtCapacity) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "at_capacity",
                format!(
                    "This instance already runs {} tasks, its capacity; retry later or elsewhere.",
                    state.gate.capacity()
                ),
                None,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    };

    let task_id = request.task_id;
    let attempt = request.attempt;
    let Ok(remaining) = (request.deadline - chrono::Utc::now()).to_std() else {
        return deadline_exceeded();
    };
    tracing::debug!(%task_id, attempt, "Executing task.");
    match tokio::time::timeout(remaining, state.agent.execute(request)).await {
        Ok(Ok(response)) => (StatusCode::OK, axum::Json(response)).into_response(),
        Ok(Err(AgentError::Rejected(message))) => {
            tracing::info!(%task_id, attempt, %message, "Task rejected.");
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "task_rejected",
                message,
                None,
            )
        }
        Ok(Err(AgentError::Failed(message))) => {
            tracing::warn!(%task_id, attempt, %message, "Task failed.");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "task_failed",
                message,
                None,
            )
        }
        Err(_) => {
            tracing::warn!(%task_id, attempt, "Task ran past its deadline; abandoned.");
            deadline_exceeded()
        }
    }
}

/// `GET /health`.
async fn health<A: Agent>(State(state): State<AppState<A>>) -> axum::Json<AgentHealth> {
    let load = state.gate.load();
    let status = if state.gate.is_draining() {
        AgentStatus::Draining
    } else {
        AgentStatus::for_load(load)
    };
    axum::Json(AgentHealth {
        status,
        load,
        capacity: state.gate.capacity(),
    })
}

fn deadline_exceeded() -> Response {
    error(
        StatusCode::GATEWAY_TIMEOUT,
        "deadline_exceeded",
        "The task's deadline passed before the agent finished.".into(),
        None,
    )
}

/// A JSON error body in the shape of docs/design.md §8.
fn error(status: StatusCode, code: &str, message: String, field: Option<String>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message,
            field,
            request_id: None,
        },
    };
    (status, axum::Json(body)).into_response()
}
