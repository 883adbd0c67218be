//! `/v1/tenants`: the units of isolation. Admins create, change and list them all; other keys
//! see their own tenant only, and another tenant's id answers 404 as if it did not exist.

use crate::api::error::ApiError;
use crate::api::extract::{JsonBody, parse_id};
use crate::api::routes::{Routes, permit};
use crate::app::AppState;
use crate::audit::AuditEvent;
use crate::auth::Caller;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use flotilla_core::auth::{Permission, Role};
use flotilla_core::id::TenantId;
use flotilla_core::tenant::{NewTenant, Tenant, TenantList, TenantUpdate};
use flotilla_core::wire::ErrorBody;
use utoipa_axum::routes;

pub(super) fn routes() -> Routes {
    Routes::new()
        .routes(permit(Permission::ReadKeys, "read tenants", routes!(list)))
        .routes(permit(
            Permission::ManageTenants,
            "create tenants",
            routes!(create),
        ))
        .routes(permit(
            Permission::ReadKeys,
            "read tenants",
            routes!(get_tenant),
        ))
        .routes(permit(
            Permission::ManageTenants,
            "change tenants",
            routes!(update),
        ))
}

/// Creates a tenant (admin keys only). Its keys are then made with `POST /v1/keys?tenant=<id>`.
#[utoipa::path(post, path = "/v1/tenants", tag = "access", request_body = NewTenant,
    responses((status = 201, body = Tenant), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<NewTenant>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let name = valid_name(&body.name, "name")?;
    let tenant = Tenant {
        id: TenantId(uuid::Uuid::now_v7()),
        name: name.to_owned(),
        created_at: state.clock.now(),
        rate_limit: body.rate_limit,
    };
    if !state.store.create_tenant(&tenant).await? {
        return Err(ApiError::Conflict(format!(
            "a tenant named `{name}` already exists"
        )));
    }
    state
        .audit
        .record(AuditEvent::by(
            &caller,
            "tenant.create",
            tenant.id.to_string(),
        ))
        .await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// Lists tenants: every tenant for admin keys, the caller's own for others.
#[utoipa::path(get, path = "/v1/tenants", tag = "access",
    responses((status = 200, body = TenantList)), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TenantList>, ApiError> {
    let tenants = if caller.role.allows(Permission::ManageTenants) {
        state.store.list_tenants().await?
    } else {
        state
            .store
            .get_tenant(caller.tenant_id)
            .await?
            .into_iter()
            .collect()
    };
    Ok(Json(TenantList { tenants }))
}

/// One tenant: the caller's own, or any for admin keys.
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "access",
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Tenant), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn get_tenant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    let id: TenantId = parse_id(&id, "tenant")?;
    let not_found = || ApiError::NotFound(format!("no tenant {id}"));
    if id != caller.tenant_id && caller.role != Role::Admin {
        return Err(not_found());
    }
    state
        .store
        .get_tenant(id)
        .await?
        .map(Json)
        .ok_or_else(not_found)
}

/// Renames a tenant or sets its rate limit (admin keys only); `"rate_limit": null` returns it to
/// the configured default.
#[utoipa::path(patch, path = "/v1/tenants/{id}", tag = "access", request_body = TenantUpdate,
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Tenant), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<TenantUpdate>,
) -> Result<Json<Tenant>, ApiError> {
    let id: TenantId = parse_id(&id, "tenant")?;
    let name = body
        .name
        .as_deref()
        .map(|n| valid_name(n, "name"))
        .transpose()?;
    let tenant = state
        .store
        .update_tenant(id, name, body.rate_limit)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no tenant {id}")))?;
    state.limits.tenant_changed(id);
    state
        .cluster
        .send(crate::cluster::Notice::TenantChanged(id));
    state
        .audit
        .record(AuditEvent::by(&caller, "tenant.update", id.to_string()))
        .await?;
    Ok(Json(tenant))
}

/// A display name: 1–100 characters, no control characters.
pub(super) fn valid_name<'a>(name: &'a str, field: &str) -> Result<&'a str, ApiError> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 100 || trimmed.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` must be 1-100 characters without control characters"),
        ));
    }
    Ok(trimmed)
}
