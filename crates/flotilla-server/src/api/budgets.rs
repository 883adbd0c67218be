//! `/v1/budgets`: a tenant's spending limits on the model gateway, one per period (docs/design.md §7).
//!
//! Budgets are read by the tenant's own keys (`read_keys`) and set or removed by admins
//! (`manage_tenants`), like a tenant's rate limit: a limit on a tenant's spending is imposed on
//! it, not chosen by it. A change applies at once on this replica (the gateway's cached budget
//! list is dropped) and within seconds on others. Changes are audited.

use crate::api::error::ApiError;
use crate::api::extract::{JsonBody, QueryParams};
use crate::api::routes::{Routes, permit};
use crate::app::AppState;
use crate::audit::AuditEvent;
use crate::auth::{Caller, TenantParam};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use flotilla_core::auth::Permission;
use flotilla_core::budget::{Budget, BudgetError, BudgetList, BudgetRequest, BudgetStatus, Period};
use flotilla_core::id::TenantId;
use flotilla_core::wire::ErrorBody;
use utoipa_axum::routes;

pub(super) fn routes() -> Routes {
    Routes::new()
        .routes(permit(Permission::ReadKeys, "read budgets", routes!(list)))
        .routes(permit(
            Permission::ManageTenants,
            "set budgets",
            routes!(set),
        ))
        .routes(permit(
            Permission::ManageTenants,
            "remove budgets",
            routes!(remove),
        ))
}

/// The budgets of the caller's tenant (or `?tenant=` for admin keys), each with the spend of its
/// current window: actual cost of finished calls, and the ceilings of calls in flight.
#[utoipa::path(get, path = "/v1/budgets", tag = "cost", params(TenantParam),
    responses((status = 200, body = BudgetList)), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(param): QueryParams<TenantParam>,
) -> Result<Json<BudgetList>, ApiError> {
    let tenant = caller.scope(param.tenant.as_deref())?;
    let now = state.clock.now();
    let mut budgets = Vec::new();
    for budget in state.store.list_budgets(Some(tenant)).await? {
        budgets.push(status(&state, budget, now).await?);
    }
    Ok(Json(BudgetList { budgets }))
}

/// Sets the tenant's budget for `daily` or `monthly` (admin keys only), replacing any. Thresholds
/// default to `[gateway] default_thresholds`, enforcement to `block`.
#[utoipa::path(put, path = "/v1/budgets/{period}", tag = "cost", request_body = BudgetRequest,
    params(("period" = Period, Path), TenantParam),
    responses((status = 200, body = BudgetStatus), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn set(
    State(state): State<AppState>,
    caller: Caller,
    Path(period): Path<String>,
    QueryParams(param): QueryParams<TenantParam>,
    JsonBody(body): JsonBody<BudgetRequest>,
) -> Result<Json<BudgetStatus>, ApiError> {
    let tenant = caller.scope(param.tenant.as_deref())?;
    let period = parse_period(&period)?;
    let now = state.clock.now();
    let budget = body
        .into_budget(
            tenant,
            period,
            &state.config.gateway.default_thresholds,
            now,
        )
        .map_err(|e| match e {
            BudgetError::ZeroLimit => {
                ApiError::invalid_field("limit", "`limit` must be greater than 0")
            }
            BudgetError::BadThreshold => ApiError::invalid_field(
                "thresholds",
                "`thresholds` must be percentages of the limit between 1 and 1000",
            ),
        })?;
    require_tenant(&state, &caller, tenant).await?;
    state.store.put_budget(&budget).await?;
    state.gateway.budgets.forget(tenant);
    state
        .audit
        .record(AuditEvent::by(&caller, "budget.set", target(&budget)))
        .await?;
    Ok(Json(status(&state, budget, now).await?))
}

/// Removes the tenant's budget for a period (admin keys only); its calls are then not limited
/// by it. 404 when there is none.
#[utoipa::path(delete, path = "/v1/budgets/{period}", tag = "cost",
    params(("period" = Period, Path), TenantParam),
    responses((status = 204, description = "Removed"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(period): Path<String>,
    QueryParams(param): QueryParams<TenantParam>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.scope(param.tenant.as_deref())?;
    let period = parse_period(&period)?;
    if !state.store.delete_budget(tenant, period).await? {
        return Err(ApiError::NotFound(format!(
            "tenant {tenant} has no {} budget",
            period.as_str()
        )));
    }
    state.gateway.budgets.forget(tenant);
    state
        .audit
        .record(AuditEvent::by(
            &caller,
            "budget.delete",
            format!("{} budget of tenant {tenant}", period.as_str()),
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A budget with the spend of its current window.
async fn status(
    state: &AppState,
    budget: Budget,
    now: flotilla_core::Timestamp,
) -> Result<BudgetStatus, ApiError> {
    let spend = state.gateway.budgets.spend(&budget, now).await?;
    Ok(BudgetStatus::new(budget, spend, now))
}

fn parse_period(text: &str) -> Result<Period, ApiError> {
    Period::parse(text).ok_or_else(|| {
        ApiError::invalid_field(
            "period",
            format!("`{text}` is not a budget period; expected `daily` or `monthly`"),
        )
    })
}

/// 404 for a tenant that does not exist (only an admin can name another tenant).
async fn require_tenant(
    state: &AppState,
    caller: &Caller,
    tenant: TenantId,
) -> Result<(), ApiError> {
    if tenant != caller.tenant_id && state.store.get_tenant(tenant).await?.is_none() {
        return Err(ApiError::NotFound(format!("no tenant {tenant}")));
    }
    Ok(())
}

/// How a budget appears in the audit log.
fn target(budget: &Budget) -> String {
    format!(
        "{} budget of tenant {}: ${} ({}, thresholds {:?})",
        budget.period.as_str(),
        budget.tenant_id,
        budget.limit,
        budget.enforcement.as_str(),
        budget.thresholds
    )
}
