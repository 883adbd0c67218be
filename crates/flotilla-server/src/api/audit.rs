//! `/v1/audit`: the hash-chained audit log (admin keys only). `flotilla audit verify` reads it
//! through this route and checks the chain itself.

use crate::api::error::ApiError;
use crate::api::extract::QueryParams;
use crate::api::routes::{Routes, permit};
use crate::app::AppState;
use crate::auth::Caller;
use axum::Json;
use axum::extract::State;
use flotilla_core::audit::{AuditEntry, AuditPage};
use flotilla_core::auth::Permission;
use flotilla_core::id::TenantId;
use flotilla_store::AuditFilter;
use serde::Deserialize;
use utoipa_axum::routes;

pub(super) fn routes() -> Routes {
    Routes::new().routes(permit(
        Permission::ReadAudit,
        "read the audit log",
        routes!(list),
    ))
}

/// Filters and page of `GET /v1/audit`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AuditQuery {
    /// Entries after this sequence number (the `next_after` of the previous page).
    pub after: Option<i64>,
    /// At most this many, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only this action, e.g. `auth.failure`.
    pub action: Option<String>,
    /// Only entries of this tenant.
    #[param(format = Uuid)]
    pub tenant: Option<String>,
}

/// Audit entries in chain order, oldest first.
#[utoipa::path(get, path = "/v1/audit", tag = "access", params(AuditQuery),
    responses((status = 200, body = AuditPage)), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    QueryParams(query): QueryParams<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            "`limit` must be between 1 and 1000",
        ));
    }
    let tenant_id = query
        .tenant
        .as_deref()
        .map(|t| {
            t.parse::<TenantId>().map_err(|_| {
                ApiError::invalid_field("tenant", format!("`{t}` is not a tenant id (a UUID)"))
            })
        })
        .transpose()?;
    let entries: Vec<AuditEntry> = state
        .store
        .list_audit(&AuditFilter {
            after: query.after,
            tenant_id,
            action: query.action,
            limit,
        })
        .await?;
    let next_after = if entries.len() == limit as usize {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(Json(AuditPage {
        entries,
        next_after,
    }))
}
