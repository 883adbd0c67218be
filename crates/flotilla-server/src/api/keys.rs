//! `/v1/keys`: API keys of a tenant. The full key is shown once, at creation; only its hash is
//! stored. A key never grants more than its creator holds: operators create and revoke keys of
//! their own tenant up to `operator`; only admins make admin keys or act on another tenant.

use crate::api::error::ApiError;
use crate::api::extract::{JsonBody, QueryParams};
use crate::api::routes::{Routes, permit};
use crate::api::tenants::valid_name;
use crate::app::AppState;
use crate::audit::AuditEvent;
use crate::auth::bootstrap::new_key;
use crate::auth::{Caller, TenantParam};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use flotilla_core::auth::{ApiKeyRecord, CreatedKey, KeyList, KeyView, NewKeyRequest, Permission};
use flotilla_core::id::TenantId;
use flotilla_core::wire::ErrorBody;
use utoipa_axum::routes;

pub(super) fn routes() -> Routes {
    Routes::new()
        .routes(permit(Permission::ReadKeys, "read keys", routes!(list)))
        .routes(permit(
            Permission::ManageKeys,
            "create keys",
            routes!(create),
        ))
        .routes(permit(Permission::ReadKeys, "read keys", routes!(get_key)))
        .routes(permit(
            Permission::ManageKeys,
            "revoke keys",
            routes!(revoke),
        ))
}

/// Creates a key in the caller's tenant (or, for admin keys, in `?tenant=`). The answer holds the
/// key itself: store it, it is not shown again.
#[utoipa::path(post, path = "/v1/keys", tag = "access", request_body = NewKeyRequest, params(TenantParam),
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(param): QueryParams<TenantParam>,
    JsonBody(body): JsonBody<NewKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let tenant = caller.scope(param.tenant.as_deref())?;
    if !caller.role.may_grant(body.role) {
        return Err(ApiError::Forbidden(format!(
            "a key with role `{}` may not create a key with role `{}`",
            caller.role, body.role
        )));
    }
    let name = valid_name(&body.name, "name")?;
    let now = state.clock.now();
    if body.expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::invalid_field(
            "expires_at",
            "`expires_at` must be in the future",
        ));
    }
    if tenant != caller.tenant_id && state.store.get_tenant(tenant).await?.is_none() {
        return Err(ApiError::NotFound(format!("no tenant {tenant}")));
    }
    let (text, mut record) = new_key(tenant, body.role, name, now);
    record.expires_at = body.expires_at;
    record.rate_limit = body.rate_limit;
    state.store.insert_api_key(&record).await?;
    let stored = state.store.get_api_key(&record.id).await?.unwrap_or(record);
    state
        .audit
        .record(AuditEvent::by(&caller, "key.create", key_target(&stored)))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: text,
            record: stored.view(),
        }),
    ))
}

/// The keys of the caller's tenant (or `?tenant=` for admin keys), oldest first, revoked ones
/// included.
#[utoipa::path(get, path = "/v1/keys", tag = "access", params(TenantParam),
    responses((status = 200, body = KeyList)), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(param): QueryParams<TenantParam>,
) -> Result<Json<KeyList>, ApiError> {
    let tenant = caller.scope(param.tenant.as_deref())?;
    let keys = state.store.list_api_keys(Some(tenant)).await?;
    Ok(Json(KeyList {
        keys: keys.iter().map(ApiKeyRecord::view).collect(),
    }))
}

/// One key by its public id.
#[utoipa::path(get, path = "/v1/keys/{id}", tag = "access", params(("id" = String, Path), TenantParam),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn get_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(param): QueryParams<TenantParam>,
) -> Result<Json<KeyView>, ApiError> {
    let tenant = caller.scope(param.tenant.as_deref())?;
    find(&state, tenant, &id).await.map(|k| Json(k.view()))
}

/// Revokes a key: it stops working at once on this replica, within seconds on others. Revoking
/// a revoked key changes nothing.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "access", params(("id" = String, Path), TenantParam),
    responses((status = 200, body = KeyView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(param): QueryParams<TenantParam>,
) -> Result<Json<KeyView>, ApiError> {
    let tenant = caller.scope(param.tenant.as_deref())?;
    let key = find(&state, tenant, &id).await?;
    if !caller.role.may_grant(key.role) {
        return Err(ApiError::Forbidden(format!(
            "a key with role `{}` may not revoke a key with role `{}`",
            caller.role, key.role
        )));
    }
    let revoked = state
        .store
        .revoke_api_key(Some(tenant), &id, state.clock.now())
        .await?
        .ok_or_else(|| not_found(&id))?;
    state.keys.forget(&id);
    state
        .cluster
        .send(crate::cluster::Notice::KeyRevoked(id.clone()));
    state
        .audit
        .record(AuditEvent::by(&caller, "key.revoke", key_target(&revoked)))
        .await?;
    Ok(Json(revoked.view()))
}

async fn find(state: &AppState, tenant: TenantId, id: &str) -> Result<ApiKeyRecord, ApiError> {
    state
        .store
        .get_api_key(id)
        .await?
        .filter(|k| k.tenant_id == tenant)
        .ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no key `{id}`"))
}

/// How a key appears in the audit log: its public id, role and tenant — never its secret.
fn key_target(key: &ApiKeyRecord) -> String {
    format!("key {} ({}, tenant {})", key.id, key.role, key.tenant_id)
}
