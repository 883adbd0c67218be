//! Agent instances: what the registry knows of each worker, and the rules on its status.

use crate::Timestamp;
use crate::id::{AgentId, TenantId};
use serde::{Deserialize, Serialize};

/// The status of an instance (docs/design.md §3).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
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
    parse_err_ty = UnknownAgentStatus,
    parse_err_fn = UnknownAgentStatus::from_name
)]
pub enum AgentStatus {
    /// Registered, not yet confirmed healthy.
    Starting,
    /// Healthy with no task in flight.
    Idle,
    /// Healthy with at least one task in flight.
    Busy,
    /// Finishing its in-flight work; gets nothing new; removed once empty.
    Draining,
    /// Taken out of rotation for misbehaving (outlier ejection).
    Ejected,
    /// Heartbeats stopped or health checks fail; gets no work.
    Failed,
    /// Taken out of rotation by an operator.
    Maintenance,
}

impl AgentStatus {
    /// All statuses.
    pub const ALL: [AgentStatus; 7] = [
        AgentStatus::Starting,
        AgentStatus::Idle,
        AgentStatus::Busy,
        AgentStatus::Draining,
        AgentStatus::Ejected,
        AgentStatus::Failed,
        AgentStatus::Maintenance,
    ];

    /// The snake_case name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// True when the instance may receive new work (given free capacity).
    pub const fn accepts_work(self) -> bool {
        matches!(
            self,
            AgentStatus::Starting | AgentStatus::Idle | AgentStatus::Busy
        )
    }

    /// The status an accepting instance shows for a given load.
    pub const fn for_load(load: u32) -> AgentStatus {
        if load == 0 {
            AgentStatus::Idle
        } else {
            AgentStatus::Busy
        }
    }
}

/// A status name that is not one of [`AgentStatus::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown agent status `{0}`")]
pub struct UnknownAgentStatus(pub String);

impl UnknownAgentStatus {
    fn from_name(name: &str) -> Self {
        UnknownAgentStatus(name.to_owned())
    }
}

/// A registered agent instance as the store keeps it and the API shows it. `Debug` leaves out
/// the signing secret.
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentInstance {
    pub id: AgentId,
    pub agent_type: String,
    /// The tenant that registered the instance, which alone it works for; `null` for a platform
    /// instance (started by a provisioner, or registered by an admin or a key of the platform's
    /// default tenant), which works for the tenants its pool serves (see [`may_serve`]).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub tenant_id: Option<TenantId>,
    /// Base URL; the control plane calls `{url}/execute` and `{url}/health`. Left out of what
    /// tenants see of platform instances.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Tasks this instance runs at once.
    pub capacity: u32,
    /// Tasks in flight on it (as dispatched by this control plane).
    pub load: u32,
    pub weight: u32,
    pub status: AgentStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Left out (`{}`) of what tenants see of platform instances.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// HMAC secret for signing requests to this instance (never serialised to API clients).
    #[serde(skip)]
    pub signing_secret: String,
    pub last_heartbeat: chrono::DateTime<chrono::Utc>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Peak-EWMA latency of its recent attempts, in milliseconds (none before the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Share of its attempts in the statistics window that succeeded (none without attempts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
}

impl std::fmt::Debug for AgentInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentInstance")
            .field("id", &self.id)
            .field("agent_type", &self.agent_type)
            .field("tenant_id", &self.tenant_id)
            .field("url", &self.url)
            .field("capacity", &self.capacity)
            .field("load", &self.load)
            .field("weight", &self.weight)
            .field("status", &self.status)
            .field("version", &self.version)
            .field("metadata", &self.metadata)
            .field("signing_secret", &"<redacted>")
            .field("last_heartbeat", &self.last_heartbeat)
            .field("created_at", &self.created_at)
            .field("latency_ms", &self.latency_ms)
            .field("success_rate", &self.success_rate)
            .finish()
    }
}

impl AgentInstance {
    /// What a caller who is not an admin sees of a platform instance: no address, no metadata.
    pub fn without_platform_details(mut self) -> AgentInstance {
        if self.tenant_id.is_none() {
            self.url = String::new();
            self.metadata = serde_json::Value::Object(serde_json::Map::new());
        }
        self
    }
}

/// The agent plane's invariant (docs/security.md, "Agent trust model"): a task of `tenant` —
/// its input, its model-gateway token and the power to write its result — may reach an instance
/// owned by `owner` only when that is the task's own tenant, or when the instance is a platform
/// instance (`None`) of a pool that serves the tenant (`serves`: the pool's `tenants`, `None`
/// meaning every tenant).
pub fn may_serve(owner: Option<TenantId>, serves: Option<&[TenantId]>, tenant: TenantId) -> bool {
    match owner {
        Some(own) => own == tenant,
        None => serves.is_none_or(|tenants| tenants.contains(&tenant)),
    }
}

/// True when an instance's heartbeats are overdue and it must be marked failed.
pub fn heartbeat_expired(
    last_heartbeat: Timestamp,
    now: Timestamp,
    timeout: chrono::Duration,
) -> bool {
    now - last_heartbeat > timeout
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};

    #[test]
    fn only_live_statuses_accept_work() {
        let accepting: Vec<_> = AgentStatus::ALL
            .into_iter()
            .filter(|s| s.accepts_work())
            .collect();
        assert_eq!(
            accepting,
            vec![AgentStatus::Starting, AgentStatus::Idle, AgentStatus::Busy]
        );
    }

    #[test]
    fn heartbeat_expires_strictly_after_the_timeout() {
        let t0 = Utc.timestamp_opt(1_000, 0).single().unwrap_or_default();
        let timeout = Duration::seconds(10);
        assert!(!heartbeat_expired(t0, t0 + Duration::seconds(10), timeout));
        assert!(heartbeat_expired(
            t0,
            t0 + Duration::milliseconds(10_001),
            timeout
        ));
    }

    #[test]
    fn a_tenant_instance_serves_its_own_tenant_only() {
        let (a, b) = (
            TenantId(uuid::Uuid::from_u128(1)),
            TenantId(uuid::Uuid::from_u128(2)),
        );
        assert!(may_serve(Some(a), None, a));
        assert!(!may_serve(Some(a), None, b));
        // A pool's `tenants` list never widens what a tenant's own instance may receive.
        assert!(!may_serve(Some(a), Some(&[a, b]), b));
    }

    #[test]
    fn a_platform_instance_serves_the_tenants_of_its_pool() {
        let (a, b) = (
            TenantId(uuid::Uuid::from_u128(1)),
            TenantId(uuid::Uuid::from_u128(2)),
        );
        assert!(may_serve(None, None, a));
        assert!(may_serve(None, None, b));
        assert!(may_serve(None, Some(&[a]), a));
        assert!(!may_serve(None, Some(&[a]), b));
        assert!(!may_serve(None, Some(&[]), a));
    }

    #[test]
    fn tenants_see_no_address_or_metadata_of_platform_instances() {
        let t0 = Utc.timestamp_opt(1_000, 0).single().unwrap_or_default();
        let mut agent = AgentInstance {
            id: AgentId(uuid::Uuid::from_u128(9)),
            agent_type: "t".into(),
            tenant_id: None,
            url: "http://10.0.0.5:9000".into(),
            capacity: 1,
            load: 0,
            weight: 1,
            status: AgentStatus::Idle,
            version: None,
            metadata: serde_json::json!({"zone": "eu"}),
            signing_secret: "s".into(),
            last_heartbeat: t0,
            created_at: t0,
            latency_ms: None,
            success_rate: None,
        };
        let shown = serde_json::to_value(agent.clone().without_platform_details()).unwrap();
        assert!(shown.get("url").is_none());
        assert_eq!(shown["metadata"], serde_json::json!({}));
        agent.tenant_id = Some(TenantId(uuid::Uuid::from_u128(1)));
        let own = serde_json::to_value(agent.without_platform_details()).unwrap();
        assert_eq!(own["url"], "http://10.0.0.5:9000");
    }

    #[test]
    fn status_names_are_pinned() {
        use crate::enum_names::assert_names;
        use strum::IntoEnumIterator;
        assert_names(
            &[
                (AgentStatus::Starting, "starting"),
                (AgentStatus::Idle, "idle"),
                (AgentStatus::Busy, "busy"),
                (AgentStatus::Draining, "draining"),
                (AgentStatus::Ejected, "ejected"),
                (AgentStatus::Failed, "failed"),
                (AgentStatus::Maintenance, "maintenance"),
            ],
            AgentStatus::as_str,
            |name| name.parse().ok(),
        );
        assert_eq!(
            AgentStatus::ALL.to_vec(),
            AgentStatus::iter().collect::<Vec<_>>()
        );
        assert_eq!(AgentStatus::Draining.to_string(), "draining");
        let err = "asleep".parse::<AgentStatus>().err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("unknown agent status `asleep`"));
    }
}
