//! Wire type of `GET /v1/system`: facts about the control-plane process that the rest of the API
//! does not show (version, uptime, store backend, CPU, memory, disk of the data directory, which
//! security settings are on, who the caller is). `flotilla doctor` reads it.
//!
//! Every measurement the server could not take is `None`, never a made-up value.

use crate::auth::Role;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /v1/system`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SystemInfo {
    /// The server's version (its crate version).
    pub version: String,
    /// When this process started serving.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Seconds since `started_at`.
    pub uptime_s: u64,
    /// `sqlite` or `postgres`.
    pub store: String,
    /// The API listener's address, e.g. `0.0.0.0:8080`.
    pub listen: String,
    /// True when the API listener serves TLS.
    pub tls: bool,
    /// True when `/metrics` answers without a key (`telemetry.metrics_public`).
    pub metrics_public: bool,
    /// The key that made this request.
    pub caller: SystemCaller,
    /// CPU, memory and file descriptors of the control-plane process.
    pub process: ProcessInfo,
    /// Space of the file system holding the data directory; `None` when it cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir_disk: Option<DiskInfo>,
    /// Tasks waiting per agent type, read from the store for this request: every tenant's for a
    /// key of the platform (default) tenant, the caller's tenant's otherwise.
    pub queued: BTreeMap<String, u64>,
    /// The model gateway's providers, each probed (`GET {base_url}/models` with its key) at
    /// most once every 30 s — the answer may be that old; the built-in simulated provider is
    /// always reachable.
    #[serde(default)]
    pub providers: Vec<ProviderStatus>,
    /// This control plane among the replicas on the same database (docs/design.md §9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaInfo>,
}

/// Which control plane answered and who leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaInfo {
    /// This control plane's name (unique per start; it holds its task leases under it).
    pub owner: String,
    /// True when this control plane leads (runs the autoscaler, the alert engine, the sweeps).
    pub leader: bool,
    /// The leader as this control plane last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_owner: Option<String>,
    /// The leader's term (the lease's generation) while this control plane leads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// A model provider as the gateway sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderStatus {
    pub name: String,
    /// `openai` or `simulated`.
    pub kind: String,
    /// True when it answered and accepted the credentials.
    pub reachable: bool,
    /// What the probe saw: the latency, or why it failed.
    pub detail: String,
}

/// The key of a `GET /v1/system` request (its public id only, never the secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SystemCaller {
    /// The key's public id (`flt_<id>`).
    pub key_id: String,
    pub role: Role,
    #[schema(value_type = String, format = Uuid)]
    pub tenant_id: crate::id::TenantId,
}

/// Resource use of the control-plane process (Linux: read from `/proc/self` and `getrusage`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessInfo {
    /// User plus system CPU time since the process started, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    /// CPUs available to the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Resident memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_memory_bytes: Option<u64>,
    /// The memory the process may use: its cgroup's limit when one is set, else the machine's
    /// total memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Open file descriptors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fds: Option<u64>,
}

/// Space of one file system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiskInfo {
    /// Bytes available to the server's user.
    pub available_bytes: u64,
    /// Size of the file system in bytes.
    pub total_bytes: u64,
}
