//! Wire types of API v1 (client ↔ control plane) and of the agent contract (control plane ↔
//! agent, docs/design.md §6). The server, the typed client and the agent SDK all use these, so the
//! three cannot drift apart.

use crate::agent::{AgentInstance, AgentStatus};
use crate::id::{AgentId, TaskId};
use crate::task::Task;
use serde::{Deserialize, Serialize};

pub mod schema;
mod secrets;
mod system;
pub use secrets::{
    PutSecret, RewrapReport, RotateSecret, SecretDeleted, SecretInfo, SecretList, SecretValue,
    SecretVersionInfo, SecretWritten,
};
pub use system::{DiskInfo, ProcessInfo, ProviderStatus, ReplicaInfo, SystemCaller, SystemInfo};

/// `POST /v1/tasks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitTask {
    /// The pool (agent type) that runs the task, e.g. `code_generator`.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub agent_type: String,
    /// Free-form input handed to the agent as is.
    #[serde(default)]
    pub input: serde_json::Value,
    /// 0 (lowest) to 9 (highest); default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<i32>,
    /// Estimated difficulty, 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub complexity: Option<f64>,
    /// A second submission with the same key returns the first task (the `Idempotency-Key`
    /// header works too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub idempotency_key: Option<String>,
    /// Deadline of each attempt in milliseconds; default from the pool or the scheduler config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub timeout_ms: Option<i64>,
    /// Attempts before the task fails; default from the pool or the scheduler config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<i32>,
}

impl SubmitTask {
    /// A submission with defaults for everything but the type and input.
    pub fn new(agent_type: impl Into<String>, input: serde_json::Value) -> Self {
        Self {
            agent_type: agent_type.into(),
            input,
            priority: None,
            complexity: None,
            idempotency_key: None,
            timeout_ms: None,
            max_attempts: None,
        }
    }
}

/// A page of `GET /v1/tasks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/agents`: an instance registers itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAgent {
    #[serde(rename = "type")]
    #[schema(pattern = "^[a-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub agent_type: String,
    /// Base URL the control plane reaches the instance at (http or https).
    #[schema(
        max_length = 2048,
        pattern = r"^https?://([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*\.?(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?(/[A-Za-z0-9._~/-]*)?$"
    )]
    pub url: String,
    /// Tasks it runs at once.
    #[schema(minimum = 1, maximum = 10_000)]
    pub capacity: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// At most 128 bytes, without control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub version: Option<String>,
}

/// Answer to `POST /v1/agents`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Registered {
    pub id: AgentId,
    /// How often the instance must heartbeat.
    pub heartbeat_interval_s: u64,
    /// Secret of the HMAC signature on requests to this instance.
    pub signing_secret: String,
}

/// `POST /v1/agents/{id}/heartbeat`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Tasks the instance is running now.
    #[schema(maximum = 10_000)]
    pub load: u32,
    /// Set to `draining` when the instance is shutting down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ReportedStatus>,
}

/// The status an instance may report of itself in a heartbeat (the others — failed, ejected,
/// maintenance — are the control plane's judgement).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportedStatus {
    Idle,
    Busy,
    /// Shutting down: finish in-flight work, send nothing new.
    Draining,
}

impl From<ReportedStatus> for AgentStatus {
    fn from(status: ReportedStatus) -> Self {
        match status {
            ReportedStatus::Idle => AgentStatus::Idle,
            ReportedStatus::Busy => AgentStatus::Busy,
            ReportedStatus::Draining => AgentStatus::Draining,
        }
    }
}

/// What the control plane wants of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Run,
    Drain,
}

/// Answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatAck {
    pub desired: Desired,
}

/// Answer to `DELETE /v1/agents/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deregistered {
    /// `deregistered` when removed, `draining` while tasks are still in flight on it.
    pub status: String,
}

/// `GET /v1/agents`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentInstance>,
}

/// Where an agent calls models during a task: the gateway's base URL and the per-task token to
/// use as its bearer key (scoped to the task and tenant, expires with the attempt's deadline).
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelGateway {
    pub base_url: String,
    pub token: String,
}

impl std::fmt::Debug for ModelGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelGateway")
            .field("base_url", &self.base_url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Body of `POST {agent}/execute`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecuteRequest {
    pub task_id: TaskId,
    /// Attempt number, from 1; with `task_id` it lets an agent deduplicate.
    pub attempt: i32,
    pub agent_type: String,
    pub input: serde_json::Value,
    /// The agent should give up after this instant; the control plane stops waiting then.
    pub deadline: chrono::DateTime<chrono::Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_gateway: Option<ModelGateway>,
}

/// Model usage an agent reports with its answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelUsage {
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// Answer of `POST {agent}/execute`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecuteResponse {
    pub output: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Vec<ModelUsage>>,
}

/// Answer of `GET {agent}/health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentHealth {
    pub status: AgentStatus,
    pub load: u32,
    pub capacity: u32,
}

/// The JSON error body of every 4xx and 5xx (docs/design.md §8).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// See [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `invalid_field`, `unknown_agent_type`, `not_found`.
    pub code: String,
    /// What was wrong and how to fix it.
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The request id (also in the `x-request-id` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `GET /health` and `GET /ready`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Probe {
    /// `ok`, or `unavailable` with a reason.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// True when a JSON value holds a U+0000 character in a string or an object key. PostgreSQL
/// cannot store such text (and most tools choke on it), so the API refuses it at the edge.
pub fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(contains_nul),
        serde_json::Value::Object(map) => {
            map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_found_at_any_depth() {
        assert!(!contains_nul(
            &serde_json::json!({"a": ["b", 1, null, {"c": "d"}]})
        ));
        assert!(contains_nul(
            &serde_json::json!({"a": ["b", {"c": "d\u{0}"}]})
        ));
        assert!(contains_nul(&serde_json::json!({"k\u{0}": 1})));
    }
}

/// One pool as `GET /v1/pools` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolView {
    /// The agent type.
    pub name: String,
    /// `local`, `static` or `kubernetes`.
    pub provisioner: String,
    pub strategy: crate::balance::StrategyKind,
    /// True when the pool has a `[[pools]]` entry (otherwise its instances registered a type no
    /// entry names, and defaults apply).
    pub configured: bool,
    pub autoscale: bool,
    pub min_instances: u32,
    pub max_instances: u32,
    /// The size the autoscaler wants (recommends, for static pools).
    pub desired: u32,
    /// Registered instances by status.
    pub instances: std::collections::BTreeMap<String, u32>,
    /// Capacity of the instances that take work.
    pub capacity: u32,
    /// Tasks in flight.
    pub load: u32,
    /// Load over capacity, as the autoscaler last sampled it.
    pub utilisation: f64,
    /// Tasks waiting, as the autoscaler last sampled it.
    pub queued: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Processes of a local pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessView>,
}

/// A local pool's process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessView {
    /// `<pool>-<n>`; the instance registers with it as `metadata.instance`.
    pub name: String,
    /// None while it waits to be restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub restarts: u32,
}

/// `GET /v1/pools`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolList {
    pub pools: Vec<PoolView>,
}

/// `GET /v1/events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventList {
    pub events: Vec<crate::event::Event>,
    /// Pass as `after` to get the events recorded since (absent when there are none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

/// A pending or firing alert as `GET /v1/alerts` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActiveAlert {
    pub rule: String,
    /// What the rule is evaluated by; the field of that name holds this alert's value (none of
    /// them for `total`).
    pub by: crate::alert::Dimension,
    /// The agent type, on rules by agent type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// The model, on rules by model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The tenant's id, on rules by tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub tenant: Option<crate::id::TenantId>,
    /// `pending` or `firing`.
    pub state: String,
    pub severity: crate::alert::Severity,
    pub signal: crate::alert::Signal,
    /// `<`, `<=`, `>` or `>=`.
    pub comparison: String,
    pub threshold: f64,
    /// The signal's last value.
    pub value: f64,
    /// Pending since (the breach began) or firing since.
    pub since: chrono::DateTime<chrono::Utc>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `GET /v1/alerts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertList {
    pub alerts: Vec<ActiveAlert>,
}

/// `POST /v1/alerts/silences`: mute an alert's actions for a while.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// The rule's name.
    pub rule: String,
    /// Only this agent type's alert (rules by agent type); absent: every type's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// Only this model's alert (rules by model); absent: every model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Only this tenant's alert (rules by tenant); absent: every tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub tenant: Option<crate::id::TenantId>,
    /// How long, in seconds (1 to 30 days).
    #[schema(minimum = 1, maximum = 2592000)]
    pub duration_s: u64,
    /// Why, for whoever reads the list.
    #[serde(default)]
    #[schema(max_length = 1000, pattern = r"^[^\x00]*$")]
    pub comment: String,
}

/// An active silence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Silence {
    pub id: uuid::Uuid,
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub tenant: Option<crate::id::TenantId>,
    pub until: chrono::DateTime<chrono::Utc>,
    pub comment: String,
    /// The key id that created it.
    pub created_by: String,
}

/// `GET /v1/alerts/silences`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SilenceList {
    pub silences: Vec<Silence>,
}
