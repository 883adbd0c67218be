//! Small request bodies are read before routing (issue 15, "connections"). A request refused
//! before its handler reads the body (401, 403, 429) would otherwise leave the body's bytes on
//! the connection; hyper closes a kept-alive connection it cannot drain at once, and a client
//! that backs off and retries on it gets a broken pipe. Bodies that declare a length of at most
//! [`DRAIN_LIMIT`] are read first, within the header-read timeout (so a body sent a byte at a
//! time is cut off too); larger or chunked bodies are read by their handler as before, and a
//! refusal then closes the connection.

use crate::api::error::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// Largest declared body read before routing.
pub(super) const DRAIN_LIMIT: usize = 64 * 1024;

/// Reads a small body before the rest of the stack sees the request.
pub(super) async fn read_small_bodies(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if !declared.is_some_and(|n| n > 0 && n <= DRAIN_LIMIT) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, DRAIN_LIMIT)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(_)) => ApiError::bad_request(
            "invalid_body",
            "the request body could not be read (shorter than its Content-Length, or the connection broke)",
        )
        .into_response(),
        Err(_) => ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} ms (server.header_read_timeout_ms)",
            timeout.as_millis()
        ))
        .into_response(),
    }
}
