//! Rows as both backends read them, and their conversion into domain types.
//!
//! Both schemas store the same logical columns with types that decode into the same Rust types
//! (UUIDs, `i64` microseconds, text), so one set of row structs serves SQLite and PostgreSQL.
//! PostgreSQL selects its JSONB columns as text to match SQLite's TEXT.

use crate::{StoreError, StoreResult};
use flotilla_core::Timestamp;
use flotilla_core::agent::{AgentInstance, AgentStatus};
use flotilla_core::auth::{ApiKeyRecord, Role};
use flotilla_core::event::{Event, EventKind};
use flotilla_core::id::{AgentId, TaskId, TenantId};
use flotilla_core::task::{Attempt, AttemptEnd, AttemptResult, Task, TaskStatus};
use std::collections::HashMap;
use uuid::Uuid;

/// A timestamp as stored: unix microseconds (sub-microsecond digits are dropped).
pub(crate) fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

/// An optional timestamp as stored.
pub(crate) fn micros_opt(t: Option<Timestamp>) -> Option<i64> {
    t.map(micros)
}

/// A stored timestamp read back.
pub(crate) fn from_micros(v: i64) -> StoreResult<Timestamp> {
    chrono::DateTime::from_timestamp_micros(v)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {v} µs is out of range")))
}

pub(crate) fn from_micros_opt(v: Option<i64>) -> StoreResult<Option<Timestamp>> {
    v.map(from_micros).transpose()
}

/// A timestamp as it will read back from the store.
pub(crate) fn truncate(t: Timestamp) -> StoreResult<Timestamp> {
    from_micros(micros(t))
}

fn json(column: &str, text: &str) -> StoreResult<serde_json::Value> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{column} is not JSON: {e}")))
}

fn json_opt(column: &str, text: Option<&str>) -> StoreResult<Option<serde_json::Value>> {
    text.map(|t| json(column, t)).transpose()
}

fn u32_of(column: &str, v: i64) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{column} {v} is out of range")))
}

/// A task row, without its attempts.
#[derive(sqlx::FromRow)]
pub(crate) struct TaskRow {
    id: Uuid,
    tenant_id: Uuid,
    agent_type: String,
    input: String,
    priority: i32,
    complexity: Option<f64>,
    idempotency_key: Option<String>,
    timeout_ms: i64,
    max_attempts: i32,
    status: String,
    attempt: i32,
    output: Option<String>,
    error: Option<String>,
    usage: Option<String>,
    agent_id: Option<Uuid>,
    trace_id: Option<String>,
    created_at: i64,
    updated_at: i64,
    not_before: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

impl TaskRow {
    pub(crate) fn into_task(self) -> StoreResult<Task> {
        let status = self
            .status
            .parse::<TaskStatus>()
            .map_err(|e| StoreError::Corrupt(format!("task {}: {e}", self.id)))?;
        Ok(Task {
            id: TaskId(self.id),
            tenant_id: TenantId(self.tenant_id),
            agent_type: self.agent_type,
            input: json("tasks.input", &self.input)?,
            priority: self.priority,
            complexity: self.complexity,
            idempotency_key: self.idempotency_key,
            timeout_ms: self.timeout_ms,
            max_attempts: self.max_attempts,
            status,
            attempt: self.attempt,
            output: json_opt("tasks.output", self.output.as_deref())?,
            error: self.error,
            usage: json_opt("tasks.usage", self.usage.as_deref())?,
            agent_id: self.agent_id.map(AgentId),
            trace_id: self.trace_id,
            created_at: from_micros(self.created_at)?,
            updated_at: from_micros(self.updated_at)?,
            not_before: from_micros(self.not_before)?,
            started_at: from_micros_opt(self.started_at)?,
            finished_at: from_micros_opt(self.finished_at)?,
            attempts: Vec::new(),
        })
    }
}

/// An attempt row; `task_id` lets one query load the attempts of several tasks.
#[derive(sqlx::FromRow)]
pub(crate) struct AttemptRow {
    pub(crate) task_id: Uuid,
    number: i32,
    agent_id: Option<Uuid>,
    started_at: i64,
    finished_at: i64,
    outcome: String,
    error: Option<String>,
}

impl AttemptRow {
    pub(crate) fn into_attempt(self) -> StoreResult<Attempt> {
        Ok(Attempt {
            number: self.number,
            agent_id: self.agent_id.map(AgentId),
            started_at: from_micros(self.started_at)?,
            finished_at: from_micros(self.finished_at)?,
            outcome: self.outcome,
            error: self.error,
        })
    }
}

/// Gives each task its attempts from rows ordered by task then number.
pub(crate) fn attach_attempts(tasks: &mut [Task], rows: Vec<AttemptRow>) -> StoreResult<()> {
    let index: HashMap<TaskId, usize> = tasks.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    for row in rows {
        let task_id = TaskId(row.task_id);
        let attempt = row.into_attempt()?;
        if let Some(task) = index.get(&task_id).and_then(|&i| tasks.get_mut(i)) {
            task.attempts.push(attempt);
        }
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    id: String,
    tenant_id: Uuid,
    role: String,
    name: String,
    secret_hash: String,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    rate_limit: Option<String>,
}

impl ApiKeyRow {
    pub(crate) fn into_record(self) -> StoreResult<ApiKeyRecord> {
        let role = self
            .role
            .parse::<Role>()
            .map_err(|e| StoreError::Corrupt(format!("api key {}: {e}", self.id)))?;
        Ok(ApiKeyRecord {
            tenant_id: TenantId(self.tenant_id),
            role,
            name: self.name,
            secret_hash: self.secret_hash,
            created_at: from_micros(self.created_at)?,
            expires_at: from_micros_opt(self.expires_at)?,
            revoked_at: from_micros_opt(self.revoked_at)?,
            rate_limit: crate::access::rate(self.rate_limit.as_deref(), &self.id)?,
            id: self.id,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AgentRow {
    id: Uuid,
    agent_type: String,
    url: String,
    capacity: i64,
    load: i64,
    weight: i64,
    status: String,
    version: Option<String>,
    metadata: String,
    signing_secret: String,
    last_heartbeat: i64,
    created_at: i64,
    tenant_id: Option<Uuid>,
}

impl AgentRow {
    pub(crate) fn into_agent(self) -> StoreResult<AgentInstance> {
        let status = self
            .status
            .parse::<AgentStatus>()
            .map_err(|e| StoreError::Corrupt(format!("agent {}: {e}", self.id)))?;
        Ok(AgentInstance {
            id: AgentId(self.id),
            agent_type: self.agent_type,
            tenant_id: self.tenant_id.map(TenantId),
            url: self.url,
            capacity: u32_of("agents.capacity", self.capacity)?,
            load: u32_of("agents.load", self.load)?,
            weight: u32_of("agents.weight", self.weight)?,
            status,
            version: self.version,
            metadata: json("agents.metadata", &self.metadata)?,
            signing_secret: self.signing_secret,
            latency_ms: None,
            success_rate: None,
            last_heartbeat: from_micros(self.last_heartbeat)?,
            created_at: from_micros(self.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    id: i64,
    at: i64,
    kind: String,
    agent_type: String,
    agent_id: Option<Uuid>,
    message: String,
    tenant_id: Option<Uuid>,
}

impl EventRow {
    pub(crate) fn into_event(self) -> StoreResult<Event> {
        let kind = self
            .kind
            .parse::<EventKind>()
            .map_err(|e| StoreError::Corrupt(format!("event {}: {e}", self.id)))?;
        Ok(Event {
            id: self.id,
            at: from_micros(self.at)?,
            kind,
            agent_type: self.agent_type,
            agent_id: self.agent_id.map(AgentId),
            message: self.message,
            tenant: self.tenant_id.map(TenantId),
        })
    }
}

/// The columns of an [`EventRow`], the same on both backends.
macro_rules! event_columns {
    () => {
        "id, at, kind, agent_type, agent_id, message, tenant_id"
    };
}
pub(crate) use event_columns;

/// Events from rows that came newest first (the latest page) or oldest first (after a cursor),
/// oldest first.
pub(crate) fn events_oldest_first(
    rows: Vec<EventRow>,
    newest_first: bool,
) -> StoreResult<Vec<Event>> {
    let mut events = rows
        .into_iter()
        .map(EventRow::into_event)
        .collect::<StoreResult<Vec<_>>>()?;
    if newest_first {
        events.reverse();
    }
    Ok(events)
}

/// The number of events to keep as a bound parameter (`u64` beyond `i64` keeps them all anyway).
pub(crate) fn keep_param(keep: u64) -> i64 {
    i64::try_from(keep).unwrap_or(i64::MAX)
}

/// The task a [`flotilla_core::task::NewTask`] becomes, with timestamps as they read back.
pub(crate) fn created_task(new: &flotilla_core::task::NewTask) -> StoreResult<Task> {
    let mut task = new.clone().into_task();
    task.created_at = truncate(task.created_at)?;
    task.updated_at = task.created_at;
    task.not_before = task.created_at;
    task.started_at = task.started_at.map(|_| task.created_at);
    Ok(task)
}

/// Counts read back as `u64`.
pub(crate) fn count(column: &str, v: i64) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{column} {v} is negative")))
}

/// The error recorded on a task whose lease expired.
pub(crate) fn lease_expired_error(attempt: i32) -> String {
    format!("lease expired: the control plane that ran attempt {attempt} stopped")
}

/// Whether every embedded migration is recorded as applied with the same checksum.
pub(crate) fn migrations_applied(
    migrator: &sqlx::migrate::Migrator,
    applied: &[(i64, Vec<u8>)],
) -> bool {
    migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .all(|m| {
            applied.iter().any(|(version, checksum)| {
                *version == m.version && checksum.as_slice() == m.checksum.as_ref()
            })
        })
}

/// Puts claimed tasks in claim order: priority (high first), then id (old first).
pub(crate) fn sort_claimed(tasks: &mut [Task]) {
    tasks.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
}

/// Per-status counts from `(status, count)` rows: every status in lifecycle order, absent ones
/// with 0.
pub(crate) fn status_counts(rows: Vec<(String, i64)>) -> StoreResult<Vec<(TaskStatus, u64)>> {
    let mut counts: Vec<(TaskStatus, u64)> = TaskStatus::ALL.into_iter().map(|s| (s, 0)).collect();
    for (status, n) in rows {
        let status = status
            .parse::<TaskStatus>()
            .map_err(|e| StoreError::Corrupt(format!("tasks.status: {e}")))?;
        let n = count("task count", n)?;
        for entry in counts.iter_mut().filter(|(s, _)| *s == status) {
            entry.1 = n;
        }
    }
    Ok(counts)
}

/// Splits a batch of ends into rounds in which each task appears at most once, keeping the
/// batch's order within and across rounds. Applying the rounds one after the other, each as one
/// set-based update, gives the same result as applying the ends one by one.
pub(crate) fn rounds(ends: &[AttemptEnd]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<TaskId, usize> = HashMap::with_capacity(ends.len());
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, end) in ends.iter().enumerate() {
        let round = seen.entry(end.task_id).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        if let Some(members) = rounds.get_mut(*round) {
            members.push(i);
        }
        *round += 1;
    }
    rounds
}

/// What an end writes on its task, flattened for a set-based update.
pub(crate) struct EndUpdate<'a> {
    /// `succeeded`, `retry` or `terminal`.
    pub(crate) kind: &'static str,
    pub(crate) status: &'static str,
    pub(crate) output: Option<&'a serde_json::Value>,
    pub(crate) usage: Option<&'a serde_json::Value>,
    pub(crate) error: Option<&'a str>,
    pub(crate) not_before: Option<i64>,
}

impl<'a> EndUpdate<'a> {
    pub(crate) fn of(end: &'a AttemptEnd) -> Self {
        match &end.result {
            AttemptResult::Succeeded { output, usage } => EndUpdate {
                kind: "succeeded",
                status: TaskStatus::Succeeded.as_str(),
                output: Some(output),
                usage: usage.as_ref(),
                error: None,
                not_before: None,
            },
            AttemptResult::Retry { error, not_before } => EndUpdate {
                kind: "retry",
                status: TaskStatus::Queued.as_str(),
                output: None,
                usage: None,
                error: Some(error),
                not_before: Some(micros(*not_before)),
            },
            AttemptResult::Terminal { status, error } => EndUpdate {
                kind: "terminal",
                status: status.as_str(),
                output: None,
                usage: None,
                error: Some(error),
                not_before: None,
            },
        }
    }
}

/// The SET and WHERE of the set-based finish, over an input relation of `e_*` columns (one row
/// per end, each task at most once). Shared by both backends.
macro_rules! finish_update {
    () => {
        "UPDATE tasks SET status = e_status, \
         output = CASE WHEN e_kind = 'succeeded' THEN e_output ELSE output END, \
         usage = CASE WHEN e_kind = 'succeeded' THEN e_usage ELSE usage END, \
         error = e_error, not_before = COALESCE(e_not_before, not_before), \
         finished_at = CASE WHEN e_kind = 'retry' THEN finished_at ELSE e_finished_at END, \
         updated_at = e_finished_at, agent_id = COALESCE(e_agent, agent_id), \
         lease_owner = NULL, lease_expires_at = NULL \
         FROM e WHERE id = e_task AND status = 'running' AND attempt = e_attempt RETURNING "
    };
}
pub(crate) use finish_update;

/// Places the tasks a round updated at their ends' positions in `out`.
pub(crate) fn place_round(
    ends: &[AttemptEnd],
    round: &[usize],
    updated: Vec<Task>,
    out: &mut [Option<Task>],
) {
    let mut by_id: HashMap<TaskId, Task> = updated.into_iter().map(|t| (t.id, t)).collect();
    for &i in round {
        if let (Some(end), Some(slot)) = (ends.get(i), out.get_mut(i)) {
            *slot = by_id.remove(&end.task_id);
        }
    }
}
