//! `/v1/alerts`: pending and firing alerts, and their history (every transition and failed
//! notification, from the fleet events).

use crate::alerts::AlertList;
use crate::api::error::ApiError;
use crate::api::extract::QueryParams;
use crate::app::AppState;
use crate::auth::Caller;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use flotilla_core::auth::Role;
use flotilla_core::event::EventKind;
use flotilla_core::wire::EventList;
use flotilla_store::EventFilter;
use serde::Deserialize;

const READ: &[Role] = &[Role::Admin, Role::Operator, Role::Viewer];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/alerts", get(list))
        .route("/alerts/history", get(history))
}

/// Pending and firing alerts, firing first, with their values and since when.
#[utoipa::path(get, path = "/v1/alerts", tag = "alerts", responses((status = 200, body = AlertList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<AlertList>, ApiError> {
    caller.require(READ, "read alerts")?;
    Ok(Json(AlertList {
        alerts: state.alerts.active(&state.config.alerting.rules),
    }))
}

/// Query of `GET /v1/alerts/history`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryQuery {
    /// Entries recorded after this id, oldest first; without it, the latest `limit`.
    pub after: Option<i64>,
    /// At most this many, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Every alert transition (pending, firing, resolved, cleared) and failed notification.
#[utoipa::path(get, path = "/v1/alerts/history", tag = "alerts", params(HistoryQuery),
    responses((status = 200, body = EventList)), security(("bearer" = [])))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> Result<Json<EventList>, ApiError> {
    caller.require(READ, "read alerts")?;
    let filter = EventFilter {
        kind: Some(EventKind::Alert),
        after: query.after,
        ..EventFilter::default()
    };
    super::events::page(&state, filter, query.limit).await
}
