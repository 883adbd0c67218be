//! `/v1/cost`: which model suits a task profile (`POST /v1/cost/recommend`, the same choice as
//! `model: "auto"`), and a tenant's spending analysis (`GET /v1/cost/analysis`). Both decisions
//! are pure functions of `flotilla-core` ([`recommend`], [`analyse`]); this module gathers
//! their inputs.

use crate::api::error::ApiError;
use crate::api::extract::{JsonBody, QueryParams};
use crate::api::routes::{Routes, permit};
use crate::app::AppState;
use crate::auth::Caller;
use axum::Json;
use axum::extract::State;
use chrono::Days;
use flotilla_core::analysis::{Analysis, analyse};
use flotilla_core::auth::Permission;
use flotilla_core::budget::Period;
use flotilla_core::recommend::{RecommendError, RecommendRequest, Recommendation, recommend};
use flotilla_core::wire::ErrorBody;
use serde::Deserialize;
use utoipa_axum::routes;

/// Days analysed when the request does not say.
pub(crate) const DEFAULT_DAYS: u32 = 30;
/// The longest window the API analyses (a leap year).
pub(crate) const MAX_DAYS: u32 = 366;
/// The most tokens a recommendation request may assume for one call's prompt or output: far
/// beyond any model's context, and low enough that no estimate saturates.
pub(crate) const MAX_TOKENS: u64 = 100_000_000;

pub(super) fn routes() -> Routes {
    Routes::new()
        .routes(permit(
            Permission::CallModels,
            "ask for a model recommendation",
            routes!(recommend_model),
        ))
        .routes(permit(
            Permission::ReadKeys,
            "read the cost analysis",
            routes!(analysis),
        ))
}

/// Recommends a model for a task profile: the best score of quality, speed and cost among the
/// configured models whose estimated cost fits `budget_limit`, with every other model ranked.
#[utoipa::path(post, path = "/v1/cost/recommend", tag = "cost", request_body = RecommendRequest,
    responses((status = 200, body = Recommendation), (status = 400, body = ErrorBody),
        (status = 422, description = "No model fits the budget limit", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn recommend_model(
    State(state): State<AppState>,
    _caller: Caller,
    JsonBody(body): JsonBody<RecommendRequest>,
) -> Result<Json<Recommendation>, ApiError> {
    for (field, tokens) in [
        ("input_tokens", body.input_tokens),
        ("output_tokens", body.output_tokens),
    ] {
        if tokens.is_some_and(|t| t > MAX_TOKENS) {
            return Err(ApiError::invalid_field(
                field,
                format!("`{field}` must be at most {MAX_TOKENS}"),
            ));
        }
    }
    recommend(state.gateway.models(), &body)
        .map(Json)
        .map_err(|e| match e {
            RecommendError::Invalid { field, message } => ApiError::invalid_field(field, message),
            RecommendError::NoneFits { reason } => ApiError::Unprocessable {
                code: "no_model_fits",
                message: reason,
                field: body
                    .budget_limit
                    .is_some()
                    .then(|| "budget_limit".to_owned()),
            },
        })
}

/// Query of `GET /v1/cost/analysis`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AnalysisQuery {
    /// Another tenant's spending (admin keys only).
    #[param(format = Uuid)]
    pub tenant: Option<String>,
    /// Days analysed, ending today (UTC): 1-366, default 30.
    #[param(minimum = 1, maximum = 366)]
    pub days: Option<u32>,
}

/// The tenant's spending over the last `days` days: daily spend, breakdowns by model and agent
/// type, the weekly trend, this month's burn rate and projection against the monthly budget,
/// and suggestions.
#[utoipa::path(get, path = "/v1/cost/analysis", tag = "cost", params(AnalysisQuery),
    responses((status = 200, body = Analysis), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn analysis(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<AnalysisQuery>,
) -> Result<Json<Analysis>, ApiError> {
    let tenant = caller.scope(query.tenant.as_deref())?;
    let days = query.days.unwrap_or(DEFAULT_DAYS);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(ApiError::invalid_field(
            "days",
            format!("`days` must be between 1 and {MAX_DAYS}"),
        ));
    }
    let now = state.clock.now();
    let today = now.date_naive();
    let first_day = today
        .checked_sub_days(Days::new(u64::from(days - 1)))
        .unwrap_or(today);
    let since = first_day.and_time(chrono::NaiveTime::MIN).and_utc();
    // Today's window ends at the next midnight (the same as the daily budget's).
    let (_, until) = Period::Daily.window(now);
    let daily = state.store.usage_daily(Some(tenant), since, until).await?;
    let (month_start, month_end) = Period::Monthly.window(now);
    let month_to_date = state
        .store
        .usage_spend(tenant, month_start, month_end)
        .await?;
    let monthly_budget = state
        .store
        .list_budgets(Some(tenant))
        .await?
        .into_iter()
        .find(|b| b.period == Period::Monthly)
        .map(|b| b.limit);
    Ok(Json(analyse(
        &daily,
        state.gateway.models(),
        monthly_budget,
        month_to_date,
        today,
        days,
    )))
}
