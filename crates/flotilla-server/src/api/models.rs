//! The model gateway's HTTP surface (docs/design.md §7): `POST /v1/chat/completions` and
//! `GET /v1/models`, OpenAI-compatible, with refusals in OpenAI's error shape so that OpenAI SDKs
//! raise their usual exceptions. What a call does is the gateway's ([`crate::gateway`]); these
//! handlers read the request and hand it over. Their state is the gateway alone (`FromRef`).

use super::error::ApiError;
use super::models_spec;
use super::routes::{Routes, permit_as};
use crate::app::AppState;
use crate::auth::Caller;
use crate::gateway::Gateway;
use crate::gateway::error::GatewayError;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flotilla_core::auth::Permission;
use flotilla_core::config::Config;
use std::sync::Arc;
use utoipa_axum::routes;

/// The gateway's routes; refusals in OpenAI's shape.
pub(crate) fn routes() -> Routes {
    Routes::new()
        .routes(permit_as::<GatewayError>(
            Permission::CallModels,
            "call models",
            routes!(chat_completions),
        ))
        .routes(permit_as::<GatewayError>(
            Permission::CallModels,
            "list models",
            routes!(list_models),
        ))
}

/// [`super::authn::require_key`] for the gateway's routes: the same checks, refusals in
/// OpenAI's shape (`authentication_error`, `rate_limit_error`, …).
pub(crate) async fn require_key(
    state: State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, GatewayError> {
    super::authn::require_key(state, request, next)
        .await
        .map_err(GatewayError::from)
}

/// Calls a model through the gateway (OpenAI's chat completions): the caller's limits and budgets
/// apply, the call is recorded in the ledger, and the answer (or stream) is the provider's.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "models",
    request_body = models_spec::ChatCompletionRequest,
    responses(
        (status = 200, description = "The provider's answer; with `stream`, server-sent events",
            content((models_spec::ChatCompletion = "application/json"), (models_spec::ServerSentEvent = "text/event-stream"))),
        (status = 400, body = models_spec::OpenAiErrorBody), (status = 401, body = models_spec::OpenAiErrorBody),
        (status = 402, description = "A `block` budget is spent", body = models_spec::OpenAiErrorBody),
        (status = 403, body = models_spec::OpenAiErrorBody),
        (status = 404, description = "No such model", body = models_spec::OpenAiErrorBody),
        (status = 413, body = models_spec::OpenAiErrorBody), (status = 429, body = models_spec::OpenAiErrorBody),
        (status = 502, description = "The provider failed", body = models_spec::OpenAiErrorBody),
        (status = 503, body = models_spec::OpenAiErrorBody),
        (status = 504, description = "The provider did not answer in time", body = models_spec::OpenAiErrorBody)),
    security(("bearer" = [])))]
async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    State(config): State<Arc<Config>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            GatewayError::from(ApiError::PayloadTooLarge {
                limit: config.max_body_bytes,
            })
        } else {
            GatewayError::invalid("body", format!("the body could not be read: {e}"))
        }
    })?;
    let incoming = headers.get("traceparent").and_then(|v| v.to_str().ok());
    crate::gateway::call::chat(gateway, &caller, incoming, body).await
}

/// The configured models in OpenAI's list shape, with Flotilla's details.
#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, body = models_spec::ModelList), (status = 401, body = models_spec::OpenAiErrorBody),
        (status = 403, body = models_spec::OpenAiErrorBody), (status = 429, body = models_spec::OpenAiErrorBody),
        (status = 503, body = models_spec::OpenAiErrorBody)),
    security(("bearer" = [])))]
async fn list_models(
    State(gateway): State<Arc<Gateway>>,
    _caller: Caller,
) -> Result<Response, GatewayError> {
    let data: Vec<serde_json::Value> = gateway
        .models()
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": m.provider,
                "flotilla": {
                    "provider": m.provider,
                    "upstream": m.upstream,
                    "simulated": m.provider == flotilla_core::model::SIMULATED_PROVIDER,
                    "prices_per_million_tokens": m.prices,
                    "quality": m.quality,
                    "speed": m.speed,
                    "fallbacks": m.fallbacks,
                    "downgrade_to": m.downgrade_to,
                }
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({"object": "list", "data": data})).into_response())
}

/// Refusals of the HTTP layer (authentication, permission, body) in OpenAI's shape.
impl From<ApiError> for GatewayError {
    fn from(e: ApiError) -> GatewayError {
        let status = e.status();
        let (kind, code) = match &e {
            ApiError::Unauthenticated(_) => ("authentication_error", "unauthenticated"),
            ApiError::AttemptEnded(_) => ("authentication_error", "attempt_ended"),
            ApiError::Forbidden(_) => ("permission_error", "forbidden"),
            ApiError::NotFound(_) => ("not_found_error", "not_found"),
            ApiError::RateLimited { .. } => ("rate_limit_error", "rate_limited"),
            ApiError::PayloadTooLarge { .. } => ("invalid_request_error", "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                ("invalid_request_error", "unsupported_media_type")
            }
            ApiError::Unavailable(_) | ApiError::Shed(_) => ("api_error", "unavailable"),
            ApiError::Internal(detail) => return GatewayError::internal(detail.clone()),
            _ => ("invalid_request_error", "invalid_request"),
        };
        let retry_after_s = match &e {
            ApiError::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
            ApiError::Unavailable(_) => Some(1),
            _ => None,
        };
        GatewayError {
            status,
            kind,
            code,
            message: e.to_string(),
            param: None,
            retry_after_s,
        }
    }
}
