//! The HTTP API: one router per resource, one [`error::ApiError`], request ids on everything.

pub(crate) mod agents;
pub(crate) mod alerts;
pub(crate) mod audit;
pub(crate) mod authn;
pub(crate) mod budgets;
pub(crate) mod cost;
mod drain;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod extract;
pub(crate) mod keys;
pub(crate) mod metrics;
pub(crate) mod models;
mod models_spec;
pub(crate) mod openapi;
pub(crate) mod pools;
pub(crate) mod probes;
pub(crate) mod routes;
pub(crate) mod secrets;
pub(crate) mod system;
pub(crate) mod tasks;
pub(crate) mod tenants;
pub(crate) mod usage;

use crate::app::AppState;
use authn::require_key;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderName, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use error::{ApiError, REQUEST_ID};
use std::any::Any;
use std::iter::once;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole API. Every route is declared once, with its OpenAPI description and, under `/v1`,
/// the permission it needs ([`routes::permit`]); `/openapi.json` is the description of exactly
/// these routes.
pub(crate) fn router(state: AppState) -> Router {
    let (router, spec) = described_routes(&state).split_for_parts();
    let rules = state.config.alerting.rules.iter().map(|r| r.name.as_str());
    let spec = axum::body::Bytes::from(
        serde_json::to_vec(&openapi::complete(spec, rules)).unwrap_or_default(),
    );
    let serve_spec = move || {
        let spec = spec.clone();
        async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                spec,
            )
        }
    };
    router
        .route("/openapi.json", get(serve_spec))
        .route("/metrics", get(metrics::serve_metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track_http,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.config.connections.header_read_timeout,
            drain::read_small_bodies,
        ))
        .layer(middleware::from_fn(request_id_scope))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let id = request.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::debug_span!("request", method = %request.method(), uri = %request.uri(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid))
        .layer(CatchPanicLayer::custom(on_panic))
        .layer(SetSensitiveRequestHeadersLayer::new(once(AUTHORIZATION)))
        .with_state(state)
}

/// Every route with its description: `/v1` behind [`require_key`] (the model gateway behind its
/// OpenAI-shaped twin), the probes open.
fn described_routes(state: &AppState) -> routes::Routes {
    let v1 = routes::Routes::new()
        .merge(tasks::routes())
        .merge(agents::routes())
        .merge(pools::routes())
        .merge(events::routes())
        .merge(alerts::routes())
        .merge(tenants::routes())
        .merge(keys::routes())
        .merge(audit::routes())
        .merge(secrets::routes())
        .merge(system::routes())
        .merge(budgets::routes())
        .merge(usage::routes())
        .merge(cost::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        // The model gateway answers refusals in OpenAI's shape, its own errors' shape.
        .merge(models::routes().route_layer(middleware::from_fn_with_state(
            state.clone(),
            models::require_key,
        )));
    routes::Routes::with_openapi(<openapi::ApiDoc as utoipa::OpenApi>::openapi())
        .merge(probes::routes())
        .merge(v1)
}

/// Makes the request id available to [`ApiError`] while the request is handled.
async fn request_id_scope(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    REQUEST_ID.scope(id, next.run(request)).await
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {}; see /openapi.json for the API",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not accept {method}", uri.path()))
}

fn on_panic(_: Box<dyn Any + Send + 'static>) -> Response {
    ApiError::Internal("a handler panicked".to_owned()).into_response()
}
