//! Authentication at the HTTP edge: the middleware in front of every `/v1` route, and the
//! extractor of the caller it names. The checks themselves are [`crate::auth::Access`]'s.

use super::error::ApiError;
use crate::app::AppState;
use crate::auth::Caller;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use std::net::{IpAddr, SocketAddr};

/// Middleware on `/v1`: every request needs `Authorization: Bearer <key>`, within the key's and
/// its tenant's rate limits. Failed authentications are audited and counted per source address;
/// a source past its rate is refused before its key is even looked at.
pub(crate) async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let source = client_source(&state, &request);
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

/// The client address of a request: the TCP peer's, or from a trusted proxy what its
/// forwarding headers say (`[server] trusted_proxies`, `flotilla_core::client_addr`).
pub(crate) fn client_source(state: &AppState, request: &Request) -> Option<IpAddr> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())?;
    Some(client_address(peer, state, request.headers()))
}

fn client_address(peer: IpAddr, state: &AppState, headers: &HeaderMap) -> IpAddr {
    if state.config.trusted_proxies.is_empty() {
        return peer;
    }
    let text = |name: &str| {
        // Several header lines of one name are one list.
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    flotilla_core::client_addr::client_address(
        peer,
        &state.config.trusted_proxies,
        text("forwarded").as_deref(),
        text("x-forwarded-for").as_deref(),
    )
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
