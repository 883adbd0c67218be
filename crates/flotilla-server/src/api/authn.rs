//! Authentication at the HTTP edge: the middleware in front of every `/v1` route, and the
//! extractor of the caller it names. The checks themselves are [`crate::auth::Access`]'s.

use super::error::ApiError;
use crate::app::AppState;
use crate::auth::Caller;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;

/// Middleware on `/v1`: every request needs `Authorization: Bearer <key>`, within the key's and
/// its tenant's rate limits. Failed authentications are audited and counted per source address;
/// a source past its rate is refused before its key is even looked at.
pub(crate) async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let caller = state
        .access
        .authenticate(source, header, request.uri().path())
        .await?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthenticated("this route needs an API key".to_owned()))
    }
}
