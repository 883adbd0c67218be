//! The one error type of the HTTP edge. It owns the status code, the log level and the JSON body
//! (`{"error": {"code", "message", "field"?, "request_id"?}}`, docs/design.md §8).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_core::wire::{ErrorBody, ErrorDetail};
use flotilla_store::StoreError;

pub(crate) use crate::telemetry::REQUEST_ID;

/// An error answered to an API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: bad JSON, a wrong type, a missing or out-of-range field.
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    /// No (valid) credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// A genuine per-task model-gateway token whose attempt is over: refused like a bad
    /// credential (401), but not a guess, so not counted or audited as a failed authentication.
    #[error("{0}")]
    AttemptEnded(String),
    /// Valid credentials without the right to do this.
    #[error("{0}")]
    Forbidden(String),
    /// The resource does not exist (or belongs to another tenant).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The route exists but not with this method; `allow` lists the methods it takes.
    #[error("{message}")]
    WrongMethod {
        message: String,
        allow: &'static str,
    },
    /// The request conflicts with the resource's state (e.g. cancelling a finished task).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the configured limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Well-formed but impossible to act on, e.g. an agent type no pool or instance serves.
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    /// The server cannot serve now (store unreachable, shutting down); retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Emergency mode (an alert's action) sheds this low-priority work; retry later.
    #[error("{0}")]
    Shed(String),
    /// A rate limit is exhausted; retry after the given number of seconds.
    #[error("{message}")]
    RateLimited { message: String, retry_after_s: u64 },
    /// The request's body did not arrive in time; the connection is closed.
    #[error("{0}")]
    RequestTimeout(String),
    /// The tenant's queue holds as many tasks as it may (`429 queue_full`); retry later.
    #[error("{0}")]
    QueueFull(String),
    /// Our own fault; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::agent_clients::RegistrationRefusal> for ApiError {
    /// A refused agent URL: 422 naming the field `url` and the rule.
    fn from(refusal: crate::agent_clients::RegistrationRefusal) -> Self {
        use crate::agent_clients::RegistrationRefusal;
        let code = match refusal {
            RegistrationRefusal::Shape(_) => "invalid_agent_url",
            RegistrationRefusal::Egress(_) => "egress_denied",
        };
        ApiError::Unprocessable {
            code,
            message: refusal.to_string(),
            field: Some("url".to_owned()),
        }
    }
}

impl ApiError {
    /// A 400 naming the field at fault.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: "invalid_field",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// A 400 without a particular field.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) | ApiError::AttemptEnded(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) | ApiError::WrongMethod { .. } => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::Shed(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } | ApiError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } | ApiError::Unprocessable { code, .. } => code,
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::AttemptEnded(_) => "attempt_ended",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) | ApiError::WrongMethod { .. } => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Shed(_) => "emergency_mode",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::QueueFull(_) => "queue_full",
            ApiError::Internal(_) => "internal",
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            ApiError::BadRequest { field, .. } | ApiError::Unprocessable { field, .. } => {
                field.clone()
            }
            _ => None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                ApiError::Unavailable(format!("the store is unavailable: {e}"))
            }
            StoreError::Conflict(message) => ApiError::Conflict(message),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let request_id = REQUEST_ID.try_with(Clone::clone).ok();
        // Our own faults are logged with detail and answered without it.
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(request_id = request_id.as_deref().unwrap_or("-"), error = %detail, "Request failed");
                "the server failed to handle the request; it has been logged".to_owned()
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(request_id = request_id.as_deref().unwrap_or("-"), error = %detail, "Request refused");
                self.to_string()
            }
            _ => self.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message,
                field: self.field(),
                request_id,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        match &self {
            ApiError::Unauthenticated(_) | ApiError::AttemptEnded(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable(_) | ApiError::QueueFull(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Shed(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            }
            ApiError::RequestTimeout(_) => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ApiError::WrongMethod { allow, .. } => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::RateLimited { retry_after_s, .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            _ => {}
        }
        response
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError as A;
        match e {
            A::Unauthenticated(message) => ApiError::Unauthenticated(message),
            A::AttemptEnded(message) => ApiError::AttemptEnded(message),
            A::Forbidden(message) => ApiError::Forbidden(message),
            A::InvalidTenant(message) => ApiError::invalid_field("tenant", message),
            A::RateLimited {
                message,
                retry_after_s,
            } => ApiError::RateLimited {
                message,
                retry_after_s,
            },
            A::Store(e) => e.into(),
        }
    }
}

impl From<crate::vault::VaultError> for ApiError {
    fn from(e: crate::vault::VaultError) -> Self {
        use crate::vault::VaultError as V;
        match e {
            V::InvalidPath(e) => ApiError::invalid_field("path", e.0),
            V::TooLarge { .. } => ApiError::BadRequest {
                code: "value_too_large",
                message: e.to_string(),
                field: Some("value".to_owned()),
            },
            V::InvalidValue(message) => ApiError::invalid_field("value", message),
            V::NotFound { .. } => ApiError::NotFound(e.to_string()),
            V::Conflict(_) => ApiError::Conflict(e.to_string()),
            V::ListTooLarge(message) => ApiError::Unprocessable {
                code: "list_too_large",
                message,
                field: Some("prefix".to_owned()),
            },
            V::Unsupported(message) => ApiError::Unprocessable {
                code: "unsupported",
                message,
                field: None,
            },
            V::NoMasterKey
            | V::Backend {
                transient: true, ..
            } => ApiError::Unavailable(e.to_string()),
            V::Store(e) => ApiError::from(e),
            V::MasterKey(_)
            | V::UnknownMasterKey { .. }
            | V::Tampered { .. }
            | V::Seal(_)
            | V::Backend { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::audit::AuditError> for ApiError {
    fn from(e: crate::audit::AuditError) -> Self {
        match e {
            crate::audit::AuditError::Store(e) => ApiError::from(e),
            crate::audit::AuditError::NoEntry => ApiError::Internal(e.to_string()),
        }
    }
}
