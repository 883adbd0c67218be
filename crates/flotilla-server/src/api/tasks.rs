//! `/v1/tasks`: submit, get (with long-poll), list, cancel.

use crate::api::error::ApiError;
use crate::api::extract::{JsonBody, QueryParams, parse_id};
use crate::api::routes::{Routes, permit};
use crate::app::AppState;
use crate::auth::{Caller, TenantParam};
use crate::scheduler::intake::IntakeError;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flotilla_core::agent::may_serve;
use flotilla_core::auth::Permission;
use flotilla_core::config::valid_agent_type;
use flotilla_core::id::{TaskId, TenantId};
use flotilla_core::task::{
    NewTask, PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN, Task, TaskStatus,
};
use flotilla_core::wire::{ErrorBody, SubmitTask, TaskPage, contains_nul};
use flotilla_store::{Cancelled, Inserted, TaskFilter};
use serde::Deserialize;
use std::time::Duration;
use utoipa_axum::routes;

const MAX_IDEMPOTENCY_KEY: usize = 255;
const MAX_TIMEOUT_MS: i64 = 24 * 3600 * 1000;

pub(super) fn routes() -> Routes {
    Routes::new()
        .routes(permit(
            Permission::SubmitTasks,
            "submit tasks",
            routes!(submit),
        ))
        .routes(permit(Permission::ReadTasks, "read tasks", routes!(list)))
        .routes(permit(
            Permission::ReadTasks,
            "read tasks",
            routes!(get_task),
        ))
        .routes(permit(
            Permission::CancelTasks,
            "cancel tasks",
            routes!(cancel),
        ))
}

/// Submits a task. `202` with the new task; `200` with the existing one when the idempotency
/// key was seen before.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = SubmitTask,
    params(("Idempotency-Key" = Option<String>, Header, description = "Alternative to the body's idempotency_key (the same value when both are sent): 1-255 visible ASCII characters or spaces", min_length = 1, max_length = 255, pattern = r"^[!-~]([ -~]*[!-~])?$"), TenantParam),
    responses((status = 202, body = Task), (status = 200, description = "Existing task for this idempotency key", body = Task),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, description = "The tenant's queue is full (`queue_full`) or a rate limit is exhausted", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    QueryParams(param): QueryParams<TenantParam>,
    JsonBody(body): JsonBody<SubmitTask>,
) -> Result<Response, ApiError> {
    let received = state.clock.now();
    let tenant = caller.scope(param.tenant.as_deref())?;
    let header_key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| {
            ApiError::invalid_field(
                "Idempotency-Key",
                "the Idempotency-Key header must be visible ASCII",
            )
        })?;
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let task = validate(&state, tenant, body, header_key, traceparent)?;
    // Priority jumps queues and escapes shedding: each role has a ceiling.
    let ceiling = state.config.scheduler.max_priority.for_role(caller.role);
    if task.priority > ceiling {
        return Err(ApiError::Forbidden(format!(
            "a key with role `{}` may submit with priority up to {ceiling} \
             (scheduler.max_priority), not {}",
            caller.role, task.priority
        )));
    }
    if task.priority < crate::alerts::EMERGENCY_MIN_PRIORITY
        && let Some(reason) = state.alerts.emergency(&task.agent_type, task.tenant_id)
    {
        return Err(ApiError::Shed(reason));
    }
    let limit = state.config.scheduler.fair_share.max_queued_per_tenant;
    state
        .scheduler
        .queue_limits
        .admit(&state.store, task.tenant_id, limit, received)
        .await?
        .map_err(|full| ApiError::QueueFull(full.to_string()))?;
    let inserted = crate::scheduler::submission::submit(&state.scheduler, task).await;
    let inserted = inserted.map_err(|e| match e {
        IntakeError::Stopped | IntakeError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
        IntakeError::Store(detail) => ApiError::Internal(detail),
    })?;
    if let (Some(traces), Inserted::Created(task)) = (&state.traces, &inserted) {
        traces.submitted(task, traceparent, received, state.clock.now());
    }
    Ok(match inserted {
        Inserted::Created(task) => (StatusCode::ACCEPTED, Json(task)).into_response(),
        Inserted::Existing(task) => (
            StatusCode::OK,
            [("idempotent-replayed", "true")],
            Json(task),
        )
            .into_response(),
    })
}

/// Checks a submission and turns it into a task to insert.
fn validate(
    state: &AppState,
    tenant: TenantId,
    body: SubmitTask,
    header_key: Option<String>,
    traceparent: Option<&str>,
) -> Result<NewTask, ApiError> {
    if !valid_agent_type(&body.agent_type) {
        return Err(ApiError::invalid_field(
            "agent_type",
            "`agent_type` must be 1-64 characters of a-z, 0-9, `_` or `-`",
        ));
    }
    if !state.serves_type(&body.agent_type, tenant) {
        return Err(ApiError::Unprocessable {
            code: "unknown_agent_type",
            message: format!(
                "no pool is configured and no instance is registered for agent type `{}`; known types: {}",
                body.agent_type,
                known_types(state, tenant)
            ),
            field: Some("agent_type".to_owned()),
        });
    }
    if contains_nul(&body.input) {
        return Err(ApiError::invalid_field(
            "input",
            "`input` may not contain the character U+0000",
        ));
    }
    let priority = body.priority.unwrap_or(PRIORITY_DEFAULT);
    if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&priority) {
        return Err(ApiError::invalid_field(
            "priority",
            format!("`priority` must be between {PRIORITY_MIN} and {PRIORITY_MAX}"),
        ));
    }
    if let Some(c) = body.complexity
        && !(0.0..=1.0).contains(&c)
    {
        return Err(ApiError::invalid_field(
            "complexity",
            "`complexity` must be between 0 and 1",
        ));
    }
    let idempotency_key = match (body.idempotency_key, header_key) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::invalid_field(
                "idempotency_key",
                "the body's idempotency_key and the Idempotency-Key header differ",
            ));
        }
        (a, b) => a.or(b),
    };
    if let Some(key) = &idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || key.chars().any(char::is_control))
    {
        return Err(ApiError::invalid_field(
            "idempotency_key",
            format!("`idempotency_key` must be 1-{MAX_IDEMPOTENCY_KEY} bytes"),
        ));
    }
    let pool = state.pool(&body.agent_type);
    let defaults = &state.config.scheduler;
    let timeout_ms = match body.timeout_ms {
        Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => ms,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "timeout_ms",
                format!("`timeout_ms` must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        None => duration_ms(
            pool.and_then(|p| p.timeout)
                .unwrap_or(defaults.default_timeout),
        ),
    };
    let max_attempts = match body.max_attempts {
        Some(n) if (1..=100).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "max_attempts",
                "`max_attempts` must be between 1 and 100",
            ));
        }
        None => i32::try_from(
            pool.and_then(|p| p.max_attempts)
                .unwrap_or(defaults.default_max_attempts),
        )
        .unwrap_or(3),
    };
    Ok(NewTask {
        id: TaskId(uuid::Uuid::now_v7()),
        tenant_id: tenant,
        agent_type: body.agent_type,
        input: body.input,
        priority,
        complexity: body.complexity,
        idempotency_key,
        timeout_ms,
        max_attempts,
        trace_id: Some(trace_id(traceparent)),
        created_at: state.clock.now(),
        claim: None,
    })
}

/// The types a tenant may submit: another tenant's own types are none of its business.
fn known_types(state: &AppState, tenant: TenantId) -> String {
    let mut types: Vec<String> = state
        .config
        .pools
        .iter()
        .filter(|p| may_serve(None, p.tenants.as_deref(), tenant))
        .map(|p| p.name.clone())
        .collect();
    types.extend(
        state
            .registry
            .types()
            .into_iter()
            .filter(|t| state.registry.serves(t, tenant)),
    );
    types.sort();
    types.dedup();
    if types.is_empty() {
        "none yet (start an agent or configure a pool)".to_owned()
    } else {
        types.join(", ")
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The trace id of an incoming W3C `traceparent`, or a new random one.
fn trace_id(traceparent: Option<&str>) -> String {
    let incoming = traceparent
        .and_then(|tp| tp.split('-').nth(1))
        .filter(|id| {
            id.len() == 32
                && id.bytes().all(|b| b.is_ascii_hexdigit())
                && id.bytes().any(|b| b != b'0')
        });
    match incoming {
        Some(id) => id.to_ascii_lowercase(),
        None => format!("{:032x}", rand::random::<u128>()),
    }
}

/// Query of `GET /v1/tasks/{id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct GetParams {
    /// Wait up to this many seconds (fractions allowed) for the task to finish.
    #[param(minimum = 0)]
    pub wait: Option<f64>,
    /// Another tenant's task (admin keys only).
    #[param(format = Uuid)]
    pub tenant: Option<String>,
}

/// Gets a task with its attempts. With `?wait=N` the answer waits until the task finishes or N
/// seconds pass (capped by `server.max_wait_s`), then returns its state either way.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = uuid::Uuid, Path), GetParams),
    responses((status = 200, body = Task), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, description = "The key has `server.max_waits_per_key` long-polls waiting already", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<GetParams>,
) -> Result<Json<Task>, ApiError> {
    let id: TaskId = parse_id(&id, "task")?;
    let wait = match params.wait {
        None => Duration::ZERO,
        Some(w) if w.is_finite() && w >= 0.0 => {
            // Anything beyond the cap (including values too large for a Duration) waits the cap.
            Duration::try_from_secs_f64(w)
                .unwrap_or(Duration::MAX)
                .min(state.config.max_wait)
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "wait",
                "`wait` must be a number of seconds ≥ 0",
            ));
        }
    };
    let tenant = Some(caller.scope(params.tenant.as_deref())?);
    let not_found = || ApiError::NotFound(format!("no task {id}"));
    if wait.is_zero() {
        return state
            .store
            .get_task(tenant, id)
            .await?
            .map(Json)
            .ok_or_else(not_found);
    }
    // Park before reading, so a completion between the read and the wait is not missed. Every
    // way out of this function drops the guard, which removes the waiter.
    let mut parked = state
        .waiters
        .park(
            id,
            &caller.key_id,
            state.config.connections.max_waits_per_key,
        )
        .ok_or_else(|| ApiError::RateLimited {
            message: format!(
                "this key has {} long-polls waiting already (server.max_waits_per_key); \
                     wait for one to end or poll without `wait`",
                state.config.connections.max_waits_per_key
            ),
            retry_after_s: 1,
        })?;
    let task = state
        .store
        .get_task(tenant, id)
        .await?
        .ok_or_else(not_found)?;
    if task.status.is_terminal() {
        return Ok(Json(task));
    }
    tokio::select! {
        () = parked.woken() => {}
        () = tokio::time::sleep(wait) => {}
        () = state.shutdown.cancelled() => {}
    }
    drop(parked);
    state
        .store
        .get_task(tenant, id)
        .await?
        .map(Json)
        .ok_or_else(not_found)
}

/// Query of `GET /v1/tasks`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only tasks of this agent type.
    pub agent_type: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(format = Uuid)]
    pub cursor: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// Another tenant's tasks (admin keys only).
    #[param(format = Uuid)]
    pub tenant: Option<String>,
}

/// Lists tasks, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(ListParams),
    responses((status = 200, body = TaskPage), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<TaskPage>, ApiError> {
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            "`limit` must be between 1 and 500",
        ));
    }
    let before = params
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<TaskId>().map_err(|_| {
                ApiError::invalid_field("cursor", "`cursor` is not a cursor from a previous page")
            })
        })
        .transpose()?;
    let filter = TaskFilter {
        tenant_id: Some(caller.scope(params.tenant.as_deref())?),
        status: params.status,
        agent_type: params.agent_type,
        before,
        limit: limit + 1,
    };
    let mut tasks = state.store.list_tasks(&filter).await?;
    let next_cursor = if tasks.len() > limit as usize {
        tasks.truncate(limit as usize);
        tasks.last().map(|t| t.id.to_string())
    } else {
        None
    };
    Ok(Json(TaskPage { tasks, next_cursor }))
}

/// Cancels a queued or running task. A running attempt's eventual result is discarded.
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks", params(("id" = uuid::Uuid, Path), TenantParam),
    responses((status = 200, body = Task), (status = 404, body = ErrorBody), (status = 409, description = "Already finished", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(param): QueryParams<TenantParam>,
) -> Result<Json<Task>, ApiError> {
    let tenant = caller.scope(param.tenant.as_deref())?;
    let id: TaskId = parse_id(&id, "task")?;
    match state
        .store
        .cancel_task(Some(tenant), id, state.clock.now())
        .await?
    {
        Cancelled::Done(task) => {
            // A running attempt's model-gateway token is refused from now on (other replicas
            // learn it from the waiters' notice, or within the attempts' cache TTL).
            state.attempts.ended(id, task.attempt);
            state.waiters.wake(id);
            Ok(Json(task))
        }
        Cancelled::AlreadyFinished(task) => Err(ApiError::Conflict(format!(
            "task {id} already finished with status `{}`",
            task.status
        ))),
        Cancelled::NotFound => Err(ApiError::NotFound(format!("no task {id}"))),
    }
}
