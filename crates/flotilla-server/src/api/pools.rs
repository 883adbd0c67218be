//! `/v1/pools`: each pool's configuration, size, load, queue and last autoscaling decision.

use crate::api::error::ApiError;
use crate::api::routes::{Routes, permit};
use crate::app::AppState;
use crate::auth::Caller;
use axum::Json;
use axum::extract::{Path, State};
use flotilla_core::auth::{Permission, Role};
use flotilla_core::config::Pool;
use flotilla_core::wire::{ErrorBody, PoolList, PoolView, ProcessView};
use utoipa_axum::routes;

pub(super) fn routes() -> Routes {
    Routes::new()
        .routes(permit(Permission::ReadFleet, "list pools", routes!(list)))
        .routes(permit(
            Permission::ReadFleet,
            "read pools",
            routes!(get_pool),
        ))
}

fn view(state: &AppState, pool: &Pool, configured: bool) -> PoolView {
    let counts = state.registry.counts(&pool.name);
    let scaling = state.scaling.get(&pool.name).unwrap_or_default();
    let (last_decision_at, last_decision) = scaling.last_decision.unzip();
    PoolView {
        name: pool.name.clone(),
        provisioner: pool.provisioner.name().to_owned(),
        strategy: pool.strategy.kind,
        configured,
        autoscale: pool.autoscale.is_some() && configured,
        min_instances: pool.min_instances,
        max_instances: pool.max_instances,
        desired: if configured {
            scaling.desired
        } else {
            counts.accepting
        },
        instances: counts
            .by_status
            .iter()
            .map(|(s, n)| (s.as_str().to_owned(), *n))
            .collect(),
        capacity: counts.capacity,
        load: counts.load,
        utilisation: scaling.utilisation,
        queued: scaling.queued,
        last_decision,
        last_decision_at,
        processes: state
            .provisioners
            .processes(&pool.name)
            .into_iter()
            .map(|p| ProcessView {
                name: p.name.0,
                pid: p.pid,
                restarts: p.restarts,
            })
            .collect(),
    }
}

fn all(state: &AppState) -> Vec<PoolView> {
    let mut pools: Vec<PoolView> = state
        .config
        .pools
        .iter()
        .map(|p| view(state, p, true))
        .collect();
    for agent_type in state.registry.types() {
        if !pools.iter().any(|p| p.name == agent_type) {
            let pool = state.registry.pool_config(&agent_type);
            pools.push(view(state, &pool, false));
        }
    }
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    pools
}

/// A tenant sees the pools that may run its tasks (not another tenant's own agent types);
/// admins see every pool.
fn visible(state: &AppState, caller: &Caller, name: &str) -> bool {
    caller.role == Role::Admin || state.serves_type(name, caller.tenant_id)
}

/// Every pool: configured ones and those of registered instances.
#[utoipa::path(get, path = "/v1/pools", tag = "fleet", responses((status = 200, body = PoolList)), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<PoolList>, ApiError> {
    let pools = all(&state)
        .into_iter()
        .filter(|p| visible(&state, &caller, &p.name))
        .collect();
    Ok(Json(PoolList { pools }))
}

/// One pool.
#[utoipa::path(get, path = "/v1/pools/{name}", tag = "fleet", params(("name" = String, Path)),
    responses((status = 200, body = PoolView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn get_pool(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<PoolView>, ApiError> {
    if !visible(&state, &caller, &name) {
        return Err(ApiError::NotFound(format!("no pool `{name}`")));
    }
    if let Some(pool) = state.config.pool(&name) {
        return Ok(Json(view(&state, pool, true)));
    }
    if state.registry.knows_type(&name) {
        let pool = state.registry.pool_config(&name);
        return Ok(Json(view(&state, &pool, false)));
    }
    Err(ApiError::NotFound(format!("no pool `{name}`")))
}
