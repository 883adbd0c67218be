//! `/v1/events`: fleet events — instance status changes, scaling decisions, provisioner actions —
//! each with its reason.

use crate::api::error::ApiError;
use crate::api::extract::{QueryParams, parse_id};
use crate::api::routes::{Routes, permit};
use crate::app::AppState;
use crate::auth::Caller;
use axum::Json;
use axum::extract::State;
use flotilla_core::auth::Permission;
use flotilla_core::event::EventKind;
use flotilla_core::id::AgentId;
use flotilla_core::wire::EventList;
use flotilla_store::EventFilter;
use serde::Deserialize;
use utoipa_axum::routes;

pub(super) fn routes() -> Routes {
    Routes::new().routes(permit(
        Permission::ReadFleet,
        "read fleet events",
        routes!(list),
    ))
}

/// Filters of `GET /v1/events`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EventQuery {
    /// Only this pool's (agent type's) events.
    pub agent_type: Option<String>,
    /// Only this instance's events.
    #[param(format = Uuid)]
    pub agent_id: Option<String>,
    /// `instance`, `scale`, `provisioner`, `alert`, `budget` or `leader`.
    pub kind: Option<EventKind>,
    /// Events recorded after this id, oldest first; without it, the latest `limit` events.
    pub after: Option<i64>,
    /// At most this many, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Fleet events, oldest first. A tenant's keys read the fleet facts that name no tenant and the
/// events of their own tenant (its instances, budgets, alerts); the platform's read all.
#[utoipa::path(get, path = "/v1/events", tag = "fleet", params(EventQuery),
    responses((status = 200, body = EventList)), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<EventQuery>,
) -> Result<Json<EventList>, ApiError> {
    let agent_id = query
        .agent_id
        .as_deref()
        .map(|id| parse_id::<AgentId>(id, "agent"))
        .transpose()
        .map_err(|_| ApiError::invalid_field("agent_id", "`agent_id` must be a UUID"))?;
    let filter = EventFilter {
        agent_type: query.agent_type,
        agent_id,
        kind: query.kind,
        readable_by: caller.reader(),
        after: query.after,
        limit: 0,
    };
    page(&state, filter, query.limit).await
}

/// One page of events matching `filter`, with `limit` checked (1-1000, default 100).
pub(super) async fn page(
    state: &AppState,
    mut filter: EventFilter,
    limit: Option<u32>,
) -> Result<Json<EventList>, ApiError> {
    filter.limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&filter.limit) {
        return Err(ApiError::invalid_field(
            "limit",
            "`limit` must be between 1 and 1000",
        ));
    }
    let events = state.store.list_events(&filter).await?;
    let next_after = events.last().map(|e| e.id).or(filter.after);
    Ok(Json(EventList { events, next_after }))
}
