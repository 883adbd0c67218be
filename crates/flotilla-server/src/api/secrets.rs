//! `/v1/secrets` and `/v1/vault`: per-tenant secrets with versions, and master-key rotation.
//!
//! Every route is confined to the caller's tenant; an admin may name another with
//! `?tenant=<uuid>`. Reads, writes, rotations, deletions and re-wraps are audited (path and
//! version, never the value). Values appear only in the body of `GET /v1/secrets/{path}` (and of
//! a rotation asked to reveal its generated value).
//!
//! axum's catch-all segment must end the route, so rotation is `POST /v1/secrets/{path}/rotate`
//! matched as `POST /v1/secrets/{*path}` whose path ends in `/rotate`; POST has no other meaning
//! on a secret.

use crate::api::error::ApiError;
use crate::api::extract::QueryParams;
use crate::api::routes::{Routes, described, permit};
use crate::app::AppState;
use crate::audit::AuditEvent;
use crate::auth::{Caller, TenantParam};
use crate::vault::{SecretPath, generate_value};
use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flotilla_core::auth::Permission;
use flotilla_core::id::TenantId;
use flotilla_core::wire::{
    ErrorBody, PutSecret, RewrapReport, RotateSecret, SecretDeleted, SecretList, SecretValue,
    SecretWritten,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa_axum::routes;

/// Most secrets one listing returns.
const MAX_LIST: u32 = 1000;
/// Random bytes in a generated value unless the request says otherwise.
const DEFAULT_GENERATED_BYTES: u32 = 32;

pub(super) fn routes() -> Routes {
    let routes = Routes::new()
        .routes(permit(
            Permission::ListSecrets,
            "list secrets",
            routes!(list),
        ))
        .routes(permit(
            Permission::ManageTenants,
            "rotate the vault's master key",
            routes!(rewrap),
        ));
    // The documented paths `/v1/secrets/{path}` and `/v1/secrets/{path}/rotate` are served by
    // one catch-all route (see the module's documentation).
    let (routes, read) = described(
        routes,
        permit(Permission::ReadSecrets, "read secrets", routes!(read)),
    );
    let (routes, write) = described(
        routes,
        permit(Permission::WriteSecrets, "write secrets", routes!(write)),
    );
    let (routes, remove) = described(
        routes,
        permit(Permission::WriteSecrets, "delete secrets", routes!(remove)),
    );
    let (routes, rotate) = described(
        routes,
        permit(Permission::WriteSecrets, "rotate secrets", routes!(rotate)),
    );
    routes.route(
        "/v1/secrets/{*path}",
        read.merge(write)
            .merge(remove)
            .merge(rotate)
            .fallback(other_method)
            .layer(axum::middleware::from_fn(rotation_route)),
    )
}

/// `/v1/secrets/{path}/rotate` (POST) and `/v1/secrets/{path}` (GET, PUT, DELETE) share one
/// catch-all route; a method that belongs to the other gets 405 with `Allow`, before the body
/// is read.
async fn rotation_route(
    request: Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    use axum::http::Method;
    let rotation = request.uri().path().ends_with("/rotate");
    let allowed = if rotation {
        *request.method() == Method::POST
    } else {
        [Method::GET, Method::HEAD, Method::PUT, Method::DELETE].contains(request.method())
    };
    if !allowed {
        return Err(wrong_method(rotation));
    }
    Ok(next.run(request).await)
}

/// A method neither route takes (OPTIONS, PATCH, …): 405 with the `Allow` of the route the
/// path names.
async fn other_method(uri: axum::http::Uri) -> ApiError {
    wrong_method(uri.path().ends_with("/rotate"))
}

/// The 405 of the rotation route or of the secret route.
fn wrong_method(rotation: bool) -> ApiError {
    if rotation {
        ApiError::WrongMethod {
            message: "/v1/secrets/{path}/rotate accepts POST only".to_owned(),
            allow: "POST",
        }
    } else {
        ApiError::WrongMethod {
            message: "/v1/secrets/{path} accepts GET, PUT and DELETE; rotate with POST /v1/secrets/{path}/rotate"
                .to_owned(),
            allow: "GET, PUT, DELETE",
        }
    }
}

/// Query of `GET /v1/secrets/{path}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ReadQuery {
    /// This version instead of the newest.
    #[param(minimum = 1)]
    pub version: Option<u32>,
    /// Act on this tenant instead of the caller's (admin only).
    pub tenant: Option<TenantId>,
}

/// Query of `GET /v1/secrets`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ListQuery {
    /// Only paths starting with this text: a secret path, or one followed by `/` (no `.`,
    /// `..` or empty segment).
    #[param(
        max_length = 257,
        pattern = r"^(([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)(/([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))*/?)?$"
    )]
    pub prefix: Option<String>,
    /// At most this many, 1-1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Act on this tenant instead of the caller's (admin only).
    pub tenant: Option<TenantId>,
}

/// The body of `PUT` ([`PutSecret`] on the wire), held as a secret from the moment it is parsed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutBody {
    value: SecretString,
}

/// The body of a rotation ([`RotateSecret`] on the wire).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RotateBody {
    value: Option<SecretString>,
    bytes: Option<u32>,
    reveal: bool,
}

/// An answer carrying a value, serialised straight from the secret.
#[derive(Serialize)]
struct ValueAnswer<'a> {
    path: &'a str,
    version: u32,
    created_at: flotilla_core::Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
}

impl fmt::Debug for ValueAnswer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueAnswer")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn secret_path(text: &str) -> Result<SecretPath, ApiError> {
    SecretPath::parse(text).map_err(|e| ApiError::invalid_field("path", e.0))
}

/// The audit target: `path@version`, prefixed by the tenant when it is not the caller's.
fn audit_target(caller: &Caller, tenant: TenantId, what: String) -> String {
    if tenant == caller.tenant_id {
        what
    } else {
        format!("{tenant}:{what}")
    }
}

/// A JSON body that may carry a secret value. Unlike [`crate::api::extract::JsonBody`], its
/// errors never quote the body: serde's messages can repeat the offending text, which may be the
/// secret. An empty body reads as `{}`.
pub(crate) struct SecretBody<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for SecretBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if let Some(content_type) = req.headers().get(axum::http::header::CONTENT_TYPE) {
            let content_type = content_type.to_str().unwrap_or_default();
            let essence = content_type.split(';').next().unwrap_or_default().trim();
            if !(essence == "application/json" || essence.ends_with("+json")) {
                return Err(ApiError::UnsupportedMediaType(
                    "the body must be JSON (Content-Type: application/json)".to_owned(),
                ));
            }
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge {
                        limit: state.config.max_body_bytes,
                    }
                } else {
                    ApiError::bad_request("unreadable_body", "the request body could not be read")
                }
            })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        parse_body(bytes).map(SecretBody)
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::bad_request("invalid_json", "the request body is not valid JSON")
        } else {
            ApiError::bad_request(
                "invalid_body",
                "the body must be a JSON object with the documented fields (`value` a string)",
            )
        }
    })
}

/// The newest version of a secret, or `?version=N`.
#[utoipa::path(get, path = "/v1/secrets/{path}", tag = "secrets",
    params(("path" = String, Path, description = "Secret path, e.g. `db/password`: 1-256 characters of A-Z, a-z, 0-9, `.`, `_`, `-` and `/`, in non-empty segments other than `.` and `..`", min_length = 1, max_length = 256, pattern = r"^([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)(/([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))*$"), ReadQuery),
    responses((status = 200, body = SecretValue), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Result<Response, ApiError> {
    let tenant = caller.scope_id(query.tenant)?;
    let path = secret_path(&path)?;
    let secret = state.vault.get(tenant, &path, query.version).await?;
    state
        .audit
        .record(AuditEvent::by(
            &caller,
            "secret.read",
            audit_target(&caller, tenant, format!("{path}@{}", secret.version)),
        ))
        .await?;
    Ok(Json(ValueAnswer {
        path: &secret.path,
        version: secret.version,
        created_at: secret.created_at,
        value: Some(secret.value.expose_secret()),
    })
    .into_response())
}

/// Writes a new version of a secret (created at version 1).
#[utoipa::path(put, path = "/v1/secrets/{path}", tag = "secrets",
    params(("path" = String, Path, description = "Secret path, e.g. `db/password`: 1-256 characters of A-Z, a-z, 0-9, `.`, `_`, `-` and `/`, in non-empty segments other than `.` and `..`", min_length = 1, max_length = 256, pattern = r"^([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)(/([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))*$"), TenantParam),
    request_body = PutSecret,
    responses((status = 201, body = SecretWritten), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn write(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    QueryParams(query): QueryParams<TenantParam>,
    SecretBody(body): SecretBody<PutBody>,
) -> Result<(StatusCode, Json<SecretWritten>), ApiError> {
    let tenant = caller.scope(query.tenant.as_deref())?;
    let path = secret_path(&path)?;
    let written = state
        .vault
        .put(
            tenant,
            &path,
            &body.value,
            Some(&caller.key_id),
            state.clock.now(),
        )
        .await?;
    state
        .audit
        .record(AuditEvent::by(
            &caller,
            "secret.write",
            audit_target(&caller, tenant, format!("{path}@{}", written.version)),
        ))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SecretWritten {
            path: path.to_string(),
            version: written.version,
            created_at: written.created_at,
            value: None,
        }),
    ))
}

/// Rotates a secret: a new version with a supplied value or a strong random one. Path:
/// `/v1/secrets/{path}/rotate`.
#[utoipa::path(post, path = "/v1/secrets/{path}/rotate", tag = "secrets",
    params(("path" = String, Path, description = "Secret path, e.g. `db/password`: 1-256 characters of A-Z, a-z, 0-9, `.`, `_`, `-` and `/`, in non-empty segments other than `.` and `..`", min_length = 1, max_length = 256, pattern = r"^([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)(/([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))*$"), TenantParam),
    request_body(content = RotateSecret, description = "Optional; `{}` or no body generates a value"),
    responses((status = 201, body = SecretWritten), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    QueryParams(query): QueryParams<TenantParam>,
    SecretBody(body): SecretBody<RotateBody>,
) -> Result<Response, ApiError> {
    // `rotation_route` lets only `…/rotate` paths through to this handler.
    let path = path
        .strip_suffix("/rotate")
        .ok_or_else(|| wrong_method(false))?;
    let tenant = caller.scope(query.tenant.as_deref())?;
    let path = secret_path(path)?;
    // Rotation replaces an existing secret; creating one is a PUT.
    state.vault.get(tenant, &path, None).await?;
    let bytes = body.bytes.unwrap_or(DEFAULT_GENERATED_BYTES);
    if !(16..=1024).contains(&bytes) {
        return Err(ApiError::invalid_field(
            "bytes",
            "`bytes` must be between 16 and 1024",
        ));
    }
    let supplied = body.value.is_some();
    let value = match body.value {
        Some(value) => value,
        None => generate_value(usize::try_from(bytes).unwrap_or(32)),
    };
    let written = state
        .vault
        .put(
            tenant,
            &path,
            &value,
            Some(&caller.key_id),
            state.clock.now(),
        )
        .await?;
    state
        .audit
        .record(AuditEvent::by(
            &caller,
            "secret.rotate",
            audit_target(&caller, tenant, format!("{path}@{}", written.version)),
        ))
        .await?;
    let reveal = body.reveal && !supplied;
    Ok((
        StatusCode::CREATED,
        Json(ValueAnswer {
            path: path.as_str(),
            version: written.version,
            created_at: written.created_at,
            value: reveal.then(|| value.expose_secret()),
        }),
    )
        .into_response())
}

/// Deletes every version of a secret. Version numbers are not reused if it is written again.
#[utoipa::path(delete, path = "/v1/secrets/{path}", tag = "secrets",
    params(("path" = String, Path, description = "Secret path, e.g. `db/password`: 1-256 characters of A-Z, a-z, 0-9, `.`, `_`, `-` and `/`, in non-empty segments other than `.` and `..`", min_length = 1, max_length = 256, pattern = r"^([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)(/([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))*$"), TenantParam),
    responses((status = 200, body = SecretDeleted), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    QueryParams(query): QueryParams<TenantParam>,
) -> Result<Json<SecretDeleted>, ApiError> {
    let tenant = caller.scope(query.tenant.as_deref())?;
    let path = secret_path(&path)?;
    let versions = state.vault.delete(tenant, &path, state.clock.now()).await?;
    state
        .audit
        .record(AuditEvent::by(
            &caller,
            "secret.delete",
            audit_target(&caller, tenant, path.to_string()),
        ))
        .await?;
    Ok(Json(SecretDeleted {
        path: path.to_string(),
        versions,
    }))
}

/// Paths of the tenant's secrets with their kept versions and times; never values.
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", params(ListQuery),
    responses((status = 200, body = SecretList)), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<SecretList>, ApiError> {
    let tenant = caller.scope_id(query.tenant)?;
    let prefix = query.prefix.unwrap_or_default();
    crate::vault::SecretPath::check_prefix(&prefix)
        .map_err(|e| ApiError::invalid_field("prefix", e.0))?;
    let limit = query.limit.unwrap_or(MAX_LIST);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            "`limit` must be between 1 and 1000",
        ));
    }
    let secrets = state.vault.list(tenant, &prefix, limit).await?;
    Ok(Json(SecretList { secrets }))
}

/// Re-wraps every data key with the current master key (after a master-key rotation). Old
/// keys can be removed once `unreadable` is 0 and no other replica still writes with them.
#[utoipa::path(post, path = "/v1/vault/rewrap", tag = "secrets",
    responses((status = 200, body = RewrapReport)), security(("bearer" = [])))]
pub(crate) async fn rewrap(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<RewrapReport>, ApiError> {
    let report = state.vault.rewrap().await?;
    state
        .audit
        .record(AuditEvent::by(
            &caller,
            "vault.rewrap",
            format!("{}: {} re-wrapped", report.master_key_id, report.rewrapped),
        ))
        .await?;
    Ok(Json(report))
}
