//! Tasks and their state machine.
//!
//! A task is `queued` until the scheduler claims it (`running`, under a lease), and ends in exactly
//! one terminal state. The store enforces "first terminal write wins"; this module says which
//! transitions exist.

use crate::Timestamp;
use crate::id::{AgentId, TaskId, TenantId};
use serde::{Deserialize, Serialize};

/// Where a task is in its life. Ordered as in its lifecycle.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
#[strum(
    serialize_all = "snake_case",
    parse_err_ty = UnknownTaskStatus,
    parse_err_fn = UnknownTaskStatus::from_name
)]
pub enum TaskStatus {
    /// Waiting for an instance (possibly until a retry's backoff has passed).
    Queued,
    /// Claimed under a lease and dispatched to an instance.
    Running,
    /// An agent answered 2xx; the output is recorded.
    Succeeded,
    /// An agent refused the task, or every attempt failed.
    Failed,
    /// Cancelled by a client before it finished.
    Cancelled,
    /// The last attempt ran past its deadline.
    TimedOut,
}

impl TaskStatus {
    /// All statuses, in lifecycle order.
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::TimedOut,
    ];

    /// True for the states a task never leaves.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded
                | TaskStatus::Failed
                | TaskStatus::Cancelled
                | TaskStatus::TimedOut
        )
    }

    /// The snake_case name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A status name that is not one of [`TaskStatus::ALL`].
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown task status `{0}`; expected one of queued, running, succeeded, failed, cancelled, timed_out"
)]
pub struct UnknownTaskStatus(pub String);

impl UnknownTaskStatus {
    fn from_name(name: &str) -> Self {
        UnknownTaskStatus(name.to_owned())
    }
}

/// Lowest and highest priority; higher runs first.
pub const PRIORITY_MIN: i32 = 0;
/// See [`PRIORITY_MIN`].
pub const PRIORITY_MAX: i32 = 9;
/// Priority of a task that does not name one.
pub const PRIORITY_DEFAULT: i32 = 5;

/// A task as the store holds it and the API returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    pub id: TaskId,
    pub tenant_id: TenantId,
    pub agent_type: String,
    pub input: serde_json::Value,
    /// 0 (lowest) to 9 (highest); higher-priority tasks are claimed first, then older ones.
    pub priority: i32,
    /// The submitter's estimate of how hard the task is, 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complexity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Deadline of each attempt, in milliseconds from its dispatch.
    pub timeout_ms: i64,
    pub max_attempts: i32,
    pub status: TaskStatus,
    /// Attempts started so far (the number of the current or last attempt).
    pub attempt: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// The error of the last failed attempt, or why the task failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<serde_json::Value>,
    /// The instance of the current or last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Not claimed before this instant (backoff between attempts).
    pub not_before: chrono::DateTime<chrono::Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Past attempts, oldest first; filled by `GET /v1/tasks/{id}`, empty in lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
}

/// One finished attempt of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    pub number: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    /// `succeeded`, `failed`, `timed_out` or `lost` (the control plane lost its lease).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A validated task ready to be inserted; the shell fills the id and times.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    pub id: TaskId,
    pub tenant_id: TenantId,
    pub agent_type: String,
    pub input: serde_json::Value,
    pub priority: i32,
    pub complexity: Option<f64>,
    pub idempotency_key: Option<String>,
    pub timeout_ms: i64,
    pub max_attempts: i32,
    pub trace_id: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Set when the task is claimed as it is inserted (an instance had a free slot and nothing
    /// older was queued): it is stored `running` with attempt 1 under this lease.
    pub claim: Option<Lease>,
}

/// A claim's lease: who runs the attempt, and until when without renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub expires_at: Timestamp,
}

impl NewTask {
    /// The task as it is right after insertion.
    pub fn into_task(self) -> Task {
        Task {
            id: self.id,
            tenant_id: self.tenant_id,
            agent_type: self.agent_type,
            input: self.input,
            priority: self.priority,
            complexity: self.complexity,
            idempotency_key: self.idempotency_key,
            timeout_ms: self.timeout_ms,
            max_attempts: self.max_attempts,
            status: if self.claim.is_some() {
                TaskStatus::Running
            } else {
                TaskStatus::Queued
            },
            attempt: i32::from(self.claim.is_some()),
            output: None,
            error: None,
            usage: None,
            agent_id: None,
            trace_id: self.trace_id,
            created_at: self.created_at,
            updated_at: self.created_at,
            not_before: self.created_at,
            started_at: self.claim.as_ref().map(|_| self.created_at),
            finished_at: None,
            attempts: Vec::new(),
        }
    }
}

/// How an attempt ended, as the scheduler records it.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptResult {
    /// The agent answered 2xx.
    Succeeded {
        output: serde_json::Value,
        usage: Option<serde_json::Value>,
    },
    /// The attempt failed and the task goes back to the queue until `not_before`.
    Retry {
        error: String,
        not_before: Timestamp,
    },
    /// The attempt failed and the task ends in `status` (failed or timed_out).
    Terminal { status: TaskStatus, error: String },
}

/// The end of one attempt, written by the scheduler's completion writer.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptEnd {
    pub task_id: TaskId,
    /// The attempt number that was claimed; a write for any other number is stale and ignored.
    pub attempt: i32,
    pub agent_id: Option<AgentId>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    pub result: AttemptResult,
}

impl AttemptEnd {
    /// The outcome name recorded on the attempt row.
    pub fn outcome(&self) -> &'static str {
        match &self.result {
            AttemptResult::Succeeded { .. } => "succeeded",
            AttemptResult::Retry { .. } => "failed",
            AttemptResult::Terminal { status, .. } => status.as_str(),
        }
    }

    /// The error recorded on the attempt row, if any.
    pub fn error(&self) -> Option<&str> {
        match &self.result {
            AttemptResult::Succeeded { .. } => None,
            AttemptResult::Retry { error, .. } | AttemptResult::Terminal { error, .. } => {
                Some(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_are_pinned() {
        use crate::enum_names::assert_names;
        use strum::IntoEnumIterator;
        assert_names(
            &[
                (TaskStatus::Queued, "queued"),
                (TaskStatus::Running, "running"),
                (TaskStatus::Succeeded, "succeeded"),
                (TaskStatus::Failed, "failed"),
                (TaskStatus::Cancelled, "cancelled"),
                (TaskStatus::TimedOut, "timed_out"),
            ],
            TaskStatus::as_str,
            |name| name.parse().ok(),
        );
        assert_eq!(
            TaskStatus::ALL.to_vec(),
            TaskStatus::iter().collect::<Vec<_>>()
        );
        assert_eq!(TaskStatus::TimedOut.to_string(), "timed_out");
        let err = "done".parse::<TaskStatus>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "unknown task status `done`; expected one of queued, running, succeeded, failed, \
                 cancelled, timed_out"
            )
        );
    }

    #[test]
    fn only_finished_states_are_terminal() {
        let terminal: Vec<_> = TaskStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            vec![
                TaskStatus::Succeeded,
                TaskStatus::Failed,
                TaskStatus::Cancelled,
                TaskStatus::TimedOut
            ]
        );
    }
}
