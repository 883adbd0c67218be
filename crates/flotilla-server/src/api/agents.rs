//! `/v1/agents`: the agent contract's registration, heartbeat and deregistration (docs/design.md §6),
//! and the fleet's listing.
//!
//! Every instance has an owner (docs/security.md, "Agent trust model"): the tenant whose key
//! registered it, or the platform. Only its owner or an admin may heartbeat, drain or deregister
//! it, and a tenant sees its own instances and the platform's that serve it — anyone else's is
//! answered `404`, exactly as a missing one.

use crate::api::error::ApiError;
use crate::api::extract::{JsonBody, QueryParams, parse_id};
use crate::api::routes::{Routes, permit};
use crate::app::AppState;
use crate::audit::AuditEvent;
use crate::auth::{Caller, TenantParam};
use crate::fleet::registry::Deregistration;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use flotilla_core::agent::{AgentInstance, AgentStatus, may_serve};
use flotilla_core::auth::{Permission, Role};
use flotilla_core::config::{announced_interval_s, valid_agent_type};
use flotilla_core::id::{AgentId, TenantId};
use flotilla_core::wire::{
    AgentList, Deregistered, ErrorBody, Heartbeat, HeartbeatAck, RegisterAgent, Registered,
    ReportedStatus, contains_nul,
};
use rand::RngCore;
use utoipa_axum::routes;

/// Largest agent metadata accepted, as JSON text.
const MAX_METADATA_BYTES: usize = 16 * 1024;

/// True when a key or string value holds a control character (CR, LF, tab, …).
fn contains_control(value: &serde_json::Value) -> bool {
    let control = |s: &str| s.chars().any(char::is_control);
    match value {
        serde_json::Value::String(s) => control(s),
        serde_json::Value::Array(items) => items.iter().any(contains_control),
        serde_json::Value::Object(map) => {
            map.iter().any(|(k, v)| control(k) || contains_control(v))
        }
        _ => false,
    }
}

pub(super) fn routes() -> Routes {
    Routes::new()
        .routes(permit(
            Permission::RegisterAgents,
            "register agents",
            routes!(register),
        ))
        .routes(permit(Permission::ReadFleet, "list agents", routes!(list)))
        .routes(permit(
            Permission::ReadFleet,
            "read agents",
            routes!(get_agent),
        ))
        .routes(permit(
            Permission::RegisterAgents,
            "deregister agents",
            routes!(deregister),
        ))
        .routes(permit(
            Permission::RegisterAgents,
            "send heartbeats",
            routes!(heartbeat),
        ))
}

/// The owner of an instance a caller registers: the platform (`None`) for admins and the keys of
/// the platform's own default tenant, the caller's tenant for everyone else. An admin may
/// register an instance for a tenant with `?tenant=`.
fn registration_owner(
    caller: &Caller,
    requested: Option<&str>,
) -> Result<Option<TenantId>, ApiError> {
    let tenant = caller.scope(requested)?;
    let platform = if requested.is_some() {
        tenant == TenantId::DEFAULT
    } else {
        caller.role == Role::Admin || tenant == TenantId::DEFAULT
    };
    Ok((!platform).then_some(tenant))
}

/// True when `caller` may heartbeat, drain or deregister an instance of `owner`: an admin, a key
/// of the owning tenant, or for a platform instance a key of the platform's default tenant.
fn manages(caller: &Caller, owner: Option<TenantId>) -> bool {
    caller.role == Role::Admin || caller.tenant_id == owner.unwrap_or(TenantId::DEFAULT)
}

/// True when `caller` may see an instance: an admin; the owning tenant; any tenant the platform
/// instance's pool serves.
fn sees(state: &AppState, caller: &Caller, agent: &AgentInstance) -> bool {
    caller.role == Role::Admin
        || match agent.tenant_id {
            Some(owner) => owner == caller.tenant_id,
            None => may_serve(
                None,
                state
                    .registry
                    .pool_config(&agent.agent_type)
                    .tenants
                    .as_deref(),
                caller.tenant_id,
            ),
        }
}

/// What `caller` is shown of an instance it may see: platform addresses and metadata are for
/// admins only.
fn shown(caller: &Caller, agent: AgentInstance) -> AgentInstance {
    if caller.role == Role::Admin {
        agent
    } else {
        agent.without_platform_details()
    }
}

/// Refuses a tenant's registration past its limits (`[fleet] max_instances_per_tenant`,
/// `max_types_per_tenant`). Counted on this control plane's view of the fleet, which other
/// replicas' registrations reach within a moment.
fn within_limits(state: &AppState, tenant: TenantId, agent_type: &str) -> Result<(), ApiError> {
    let fleet = &state.config.fleet;
    let (instances, types) = state.registry.owned_by(tenant);
    let limit = |message: String| ApiError::Unprocessable {
        code: "agent_limit",
        message,
        field: None,
    };
    if instances >= fleet.max_instances_per_tenant {
        return Err(limit(format!(
            "the tenant has {instances} instances registered, its limit ([fleet] max_instances_per_tenant = {})",
            fleet.max_instances_per_tenant
        )));
    }
    if !types.iter().any(|t| t == agent_type) && types.len() as u32 >= fleet.max_types_per_tenant {
        return Err(limit(format!(
            "the tenant's instances have {} types, its limit ([fleet] max_types_per_tenant = {})",
            types.len(),
            fleet.max_types_per_tenant
        )));
    }
    Ok(())
}

/// Registers an instance. It gets work at once and must heartbeat at the interval given.
#[utoipa::path(post, path = "/v1/agents", tag = "agents", request_body = RegisterAgent, params(TenantParam),
    responses((status = 201, body = Registered), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn register(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(param): QueryParams<TenantParam>,
    JsonBody(body): JsonBody<RegisterAgent>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let owner = registration_owner(&caller, param.tenant.as_deref())?;
    if !valid_agent_type(&body.agent_type) {
        return Err(ApiError::invalid_field(
            "type",
            "`type` must be 1-64 characters of a-z, 0-9, `_` or `-`",
        ));
    }
    let url = state.agents.registrable(owner, &body.url).await?;
    if !(1..=10_000).contains(&body.capacity) {
        return Err(ApiError::invalid_field(
            "capacity",
            "`capacity` must be between 1 and 10000",
        ));
    }
    let weight = body.weight.unwrap_or(1);
    if !(1..=1000).contains(&weight) {
        return Err(ApiError::invalid_field(
            "weight",
            "`weight` must be between 1 and 1000",
        ));
    }
    let metadata = body.metadata.unwrap_or_else(|| serde_json::json!({}));
    // Metadata reaches logs, events, labels and the dashboards; control characters (CR/LF
    // header or log-line injection) and oversized blobs are refused.
    if !metadata.is_object()
        || contains_nul(&metadata)
        || contains_control(&metadata)
        || metadata.to_string().len() > MAX_METADATA_BYTES
    {
        return Err(ApiError::invalid_field(
            "metadata",
            "`metadata` must be a JSON object of at most 16 KiB without control characters",
        ));
    }
    if body
        .version
        .as_deref()
        .is_some_and(|v| v.len() > 128 || v.chars().any(char::is_control))
    {
        return Err(ApiError::invalid_field(
            "version",
            "`version` must be at most 128 printable characters",
        ));
    }
    if let Some(tenant) = owner {
        within_limits(&state, tenant, &body.agent_type)?;
    }
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let now = state.clock.now();
    let agent = AgentInstance {
        id: AgentId(uuid::Uuid::now_v7()),
        agent_type: body.agent_type,
        tenant_id: owner,
        url: url.as_str().trim_end_matches('/').to_owned(),
        capacity: body.capacity,
        load: 0,
        weight,
        status: AgentStatus::Idle,
        version: body.version,
        metadata,
        signing_secret: hex::encode(secret),
        latency_ms: None,
        success_rate: None,
        last_heartbeat: now,
        created_at: now,
    };
    state.store.insert_agent(&agent).await?;
    audit(&state, &caller, "agent.register", &agent).await?;
    let registered = Registered {
        id: agent.id,
        heartbeat_interval_s: announced_interval_s(state.config.scheduler.heartbeat_interval),
        signing_secret: agent.signing_secret.clone(),
    };
    let agent_type = agent.agent_type.clone();
    state.registry.insert(agent, now);
    state.scheduler.ensure(&agent_type);
    state.cluster.send(crate::cluster::Notice::Agents);
    Ok((StatusCode::CREATED, Json(registered)))
}

/// Records a heartbeat; the answer says whether to keep running or drain.
#[utoipa::path(post, path = "/v1/agents/{id}/heartbeat", tag = "agents", request_body = Heartbeat, params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = HeartbeatAck), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let id: AgentId = parse_id(&id, "agent")?;
    if body.load > 10_000 {
        return Err(ApiError::invalid_field(
            "load",
            "`load` must be between 0 and 10000",
        ));
    }
    let now = state.clock.now();
    // An instance that registered with another control plane on the same database.
    if state.registry.get(id).is_none() {
        let stored = state.store.get_agent(id).await?;
        if state.registry.adopt(stored, now)
            && let Some(agent) = state.registry.get(id)
        {
            state.scheduler.ensure(&agent.agent_type);
        }
    }
    let before = managed(&state, &caller, id)?;
    let drains =
        body.status == Some(ReportedStatus::Draining) && before.status != AgentStatus::Draining;
    let (desired, status) = state
        .registry
        .heartbeat(id, body.status == Some(ReportedStatus::Draining), now)
        .ok_or_else(|| ApiError::NotFound(format!("no agent {id}; register again")))?;
    state
        .store
        .heartbeat_agent(id, body.load, status, now)
        .await?;
    if drains {
        audit(&state, &caller, "agent.drain", &before).await?;
    }
    Ok(Json(HeartbeatAck { desired }))
}

/// Deregisters an instance: no new work at once, removed when its in-flight tasks end.
#[utoipa::path(delete, path = "/v1/agents/{id}", tag = "agents", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = Deregistered), (status = 202, description = "Draining", body = Deregistered), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn deregister(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Deregistered>), ApiError> {
    let id: AgentId = parse_id(&id, "agent")?;
    let agent = managed(&state, &caller, id)?;
    let outcome = state.registry.deregister(id, state.clock.now());
    if outcome != Deregistration::Unknown {
        audit(&state, &caller, "agent.deregister", &agent).await?;
    }
    match outcome {
        Deregistration::Removed => {
            state.store.delete_agent(id).await?;
            state.cluster.send(crate::cluster::Notice::Agents);
            Ok((
                StatusCode::OK,
                Json(Deregistered {
                    status: "deregistered".to_owned(),
                }),
            ))
        }
        Deregistration::Draining => {
            state
                .store
                .set_agent_status(id, AgentStatus::Draining)
                .await?;
            Ok((
                StatusCode::ACCEPTED,
                Json(Deregistered {
                    status: "draining".to_owned(),
                }),
            ))
        }
        Deregistration::Unknown => Err(ApiError::NotFound(format!("no agent {id}"))),
    }
}

/// Lists every registered instance with its status and load.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", responses((status = 200, body = AgentList)), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<AgentList>, ApiError> {
    let agents = state
        .registry
        .list()
        .into_iter()
        .filter(|agent| sees(&state, &caller, agent))
        .map(|agent| shown(&caller, agent))
        .collect();
    Ok(Json(AgentList { agents }))
}

/// One instance.
#[utoipa::path(get, path = "/v1/agents/{id}", tag = "agents", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = AgentInstance), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn get_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AgentInstance>, ApiError> {
    let id: AgentId = parse_id(&id, "agent")?;
    state
        .registry
        .get(id)
        .filter(|agent| sees(&state, &caller, agent))
        .map(|agent| Json(shown(&caller, agent)))
        .ok_or_else(|| ApiError::NotFound(format!("no agent {id}")))
}

/// The instance `id` when `caller` may manage it; `404` when it does not exist or is not the
/// caller's, so that ids cannot be probed.
fn managed(state: &AppState, caller: &Caller, id: AgentId) -> Result<AgentInstance, ApiError> {
    state
        .registry
        .get(id)
        .filter(|agent| manages(caller, agent.tenant_id))
        .ok_or_else(|| ApiError::NotFound(format!("no agent {id}; register again")))
}

/// Appends `action` on an instance to the audit log: its id, type and owner (not its URL).
async fn audit(
    state: &AppState,
    caller: &Caller,
    action: &'static str,
    agent: &AgentInstance,
) -> Result<(), ApiError> {
    let target = match agent.tenant_id {
        Some(tenant) => format!("agent {} ({}, tenant {tenant})", agent.id, agent.agent_type),
        None => format!("agent {} ({}, platform)", agent.id, agent.agent_type),
    };
    state
        .audit
        .record(AuditEvent::by(caller, action, target))
        .await?;
    Ok(())
}
