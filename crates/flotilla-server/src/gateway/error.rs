//! Errors of the model gateway, answered in OpenAI's shape
//! (`{"error": {"message", "type", "param", "code"}}`) so that OpenAI SDKs raise their usual
//! exceptions (`NotFoundError`, `RateLimitError`, …) with our message.

use crate::telemetry::REQUEST_ID;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error of a gateway route.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct GatewayError {
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error`, `insufficient_quota`, `api_error`, `timeout_error`.
    pub kind: &'static str,
    /// A snake_case code, as in Flotilla's own errors.
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    /// Seconds for `Retry-After`.
    pub retry_after_s: Option<u64>,
}

impl GatewayError {
    pub(crate) fn invalid(param: &str, message: impl Into<String>) -> GatewayError {
        GatewayError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: "invalid_field",
            message: message.into(),
            param: Some(param.to_owned()),
            retry_after_s: None,
        }
    }

    pub(crate) fn model_not_found(model: &str, known: &[String]) -> GatewayError {
        GatewayError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: "model_not_found",
            message: format!(
                "the model `{model}` does not exist; known models: {} (or `auto`)",
                known.join(", ")
            ),
            param: Some("model".to_owned()),
            retry_after_s: None,
        }
    }

    /// 422: the tenant has a budget and the model (or a fallback it may use) has no price, so the
    /// call could not be reserved against it.
    pub(crate) fn unpriced_model(requested: &str, unpriced: &str) -> GatewayError {
        let which = if requested == unpriced {
            format!("the model `{unpriced}` has")
        } else {
            format!("`{unpriced}`, which `{requested}` may fall back to, has")
        };
        GatewayError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            kind: "invalid_request_error",
            code: "unpriced_model",
            message: format!(
                "{which} no price for what this call may use (input or output tokens), and \
                 your tenant has a budget, which a call of unknown cost could overrun; an \
                 admin may set the model's `prices` or mark it `free = true` in `[[models]]`"
            ),
            param: Some("model".to_owned()),
            retry_after_s: None,
        }
    }

    /// 402: a `block` budget is spent.
    pub(crate) fn budget_exceeded(message: String) -> GatewayError {
        GatewayError {
            status: StatusCode::PAYMENT_REQUIRED,
            kind: "insufficient_quota",
            code: "budget_exceeded",
            message,
            param: None,
            retry_after_s: None,
        }
    }

    pub(crate) fn rate_limited(message: String, retry_after_s: u64) -> GatewayError {
        GatewayError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            code: "rate_limited",
            message,
            param: None,
            retry_after_s: Some(retry_after_s.max(1)),
        }
    }

    /// 502: every attempt at the upstream failed.
    pub(crate) fn upstream(message: String) -> GatewayError {
        GatewayError {
            status: StatusCode::BAD_GATEWAY,
            kind: "api_error",
            code: "upstream_error",
            message,
            param: None,
            retry_after_s: None,
        }
    }

    /// 504: the upstream did not answer in time.
    pub(crate) fn upstream_timeout(message: String) -> GatewayError {
        GatewayError {
            status: StatusCode::GATEWAY_TIMEOUT,
            kind: "timeout_error",
            code: "upstream_timeout",
            message,
            param: None,
            retry_after_s: None,
        }
    }

    /// 500: our own fault, logged with `detail` and answered without it.
    pub(crate) fn internal(detail: String) -> GatewayError {
        tracing::error!(error = %detail, "Gateway request failed");
        GatewayError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "api_error",
            code: "internal",
            message: "the server failed to handle the request; it has been logged".to_owned(),
            param: None,
            retry_after_s: None,
        }
    }

    /// The error as an OpenAI-shaped JSON value (also sent as the last event of a broken stream).
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
                "request_id": REQUEST_ID.try_with(Clone::clone).ok(),
            }
        })
    }
}

impl From<flotilla_store::StoreError> for GatewayError {
    fn from(e: flotilla_store::StoreError) -> GatewayError {
        match e {
            flotilla_store::StoreError::Unavailable(_) => GatewayError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "api_error",
                code: "unavailable",
                message: format!("the store is unavailable: {e}"),
                param: None,
                retry_after_s: Some(1),
            },
            other => GatewayError::internal(other.to_string()),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}
