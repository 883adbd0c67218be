//! `/v1/audit`: the hash-chained audit log (admin keys only). `flotilla audit verify` reads it
//! through this route and checks the chain itself.

use crate::api::error::ApiError;
use crate::api::extract::QueryParams;
use crate::api::routes::{Routes, permit};
use crate::app::AppState;
use crate::auth::Caller;
use axum::Json;
use axum::extract::State;
use flotilla_core::audit::{AuditEntry, AuditPage, AuditVerification, Start};
use flotilla_core::auth::Permission;
use flotilla_core::id::TenantId;
use flotilla_core::wire::ErrorBody;
use flotilla_store::AuditFilter;
use serde::Deserialize;
use utoipa_axum::routes;

pub(super) fn routes() -> Routes {
    Routes::new()
        .routes(permit(
            Permission::ReadAudit,
            "read the audit log",
            routes!(list),
        ))
        .routes(permit(
            Permission::ReadAudit,
            "verify the audit log",
            routes!(verify),
        ))
}

/// Query of `GET /v1/audit/verify`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct VerifyQuery {
    /// Check from this anchor (`SEQ:HASH`, the `head` of an earlier check) instead of entry 1:
    /// the log must still hold that entry, so deleting newer entries is found.
    pub since: Option<String>,
}

/// Checks the whole log with the master keys' audit keys: every MAC and link, from entry 1 (or
/// the recorded prune before the first entry left), or from `since`.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "access", params(VerifyQuery),
    responses((status = 200, body = AuditVerification), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn verify(
    State(state): State<AppState>,
    _caller: Caller,
    QueryParams(query): QueryParams<VerifyQuery>,
) -> Result<Json<AuditVerification>, ApiError> {
    let start = match query.since.as_deref() {
        None => Start::Beginning,
        Some(anchor) => anchor
            .parse()
            .map_err(|e: String| ApiError::invalid_field("since", e))?,
    };
    let verified = state
        .audit
        .verify(&start)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(AuditVerification {
        intact: verified.broken.is_none(),
        checked: verified.checked,
        head: verified.head,
        problem: verified.broken.map(|b| b.to_string()),
    }))
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
