//! Fleet events: every state change of an instance, every autoscaling decision and every action
//! of a provisioner, each with its reason (docs/design.md §5). The shell logs them and keeps them in the
//! store, where `GET /v1/events` reads them.

use crate::Timestamp;
use crate::alert::{Dimension, Signal};
use crate::id::{AgentId, TenantId};
use serde::{Deserialize, Serialize};

/// What an event is about.
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
    parse_err_ty = UnknownEventKind,
    parse_err_fn = UnknownEventKind::from_name
)]
pub enum EventKind {
    /// An instance changed status (registered, failed, ejected, restored, draining, removed).
    Instance,
    /// The autoscaler changed (or, for a static pool, recommended changing) a pool's size.
    Scale,
    /// A provisioner started, restarted or stopped an instance.
    Provisioner,
    /// An alert became pending, fired, resolved or cleared; a notification failed.
    Alert,
    /// A tenant's spending reached one of its budget's thresholds.
    Budget,
    /// A control plane became the leader of the deployment, or stopped being it.
    Leader,
}

impl EventKind {
    /// All kinds.
    pub const ALL: [EventKind; 6] = [
        EventKind::Instance,
        EventKind::Scale,
        EventKind::Provisioner,
        EventKind::Alert,
        EventKind::Budget,
        EventKind::Leader,
    ];

    /// The snake_case name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// An event kind name that is not one of [`EventKind::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown event kind `{0}`")]
pub struct UnknownEventKind(pub String);

impl UnknownEventKind {
    fn from_name(name: &str) -> Self {
        UnknownEventKind(name.to_owned())
    }
}

/// An event before the store numbers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub at: Timestamp,
    pub kind: EventKind,
    /// The pool (agent type) it concerns.
    pub agent_type: String,
    /// The instance it concerns, if one.
    pub agent_id: Option<AgentId>,
    /// One human-readable line with the reason, e.g.
    /// `pool code_generator 3 → 5: utilisation 0.91 > 0.80 for 30s, queue 42`.
    pub message: String,
    /// Who may read it: see [`visible_to`].
    pub tenant: Option<TenantId>,
}

/// A stored event, numbered in the order it was recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Increasing number; use it as the `after` cursor to follow new events.
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub kind: EventKind,
    pub agent_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    pub message: String,
    /// The tenant it concerns: only that tenant and the platform read it. Absent on fleet facts
    /// that name no tenant, which everyone who may read the fleet reads. Events only the
    /// platform reads name the platform's default tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub tenant: Option<TenantId>,
}

/// The owner of events only the platform may read (failed notifications, usage summed over
/// tenants): its own default tenant, whose keys and admins read everything.
pub const PLATFORM: Option<TenantId> = Some(TenantId::DEFAULT);

/// Whether a reader of `reader`'s tenant may read an event or alert owned by `owner`: a fleet
/// fact (`None`) or one of its own. The platform's readers are not filtered at all
/// (docs/design.md §10, "Tenant isolation").
pub fn visible_to(owner: Option<TenantId>, reader: TenantId) -> bool {
    owner.is_none_or(|o| o == reader)
}

/// The owner of an alert (and of the events of its transitions) of a rule on `signal` by `by`,
/// for `tenant` when the rule is by tenant. A tenant's own alert is its; token and budget
/// figures summed over tenants (by model or in total) reveal what the others use, so only the
/// platform reads them; every other signal is a fleet fact naming no tenant.
pub fn alert_owner(signal: Signal, by: Dimension, tenant: Option<TenantId>) -> Option<TenantId> {
    if by == Dimension::Tenant {
        return tenant.or(PLATFORM);
    }
    match signal {
        Signal::HourlyTokens | Signal::BudgetUtilisation => PLATFORM,
        Signal::SuccessRate
        | Signal::ErrorRate
        | Signal::P95ResponseTime
        | Signal::QueueLength
        | Signal::HealthyInstances => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_read_fleet_facts_and_their_own_events_only() {
        let mine = TenantId(uuid::Uuid::from_u128(7));
        let other = TenantId(uuid::Uuid::from_u128(8));
        assert!(visible_to(None, mine));
        assert!(visible_to(Some(mine), mine));
        assert!(!visible_to(Some(other), mine));
        assert!(!visible_to(PLATFORM, mine));
    }

    #[test]
    fn usage_summed_over_tenants_belongs_to_the_platform() {
        let t = TenantId(uuid::Uuid::from_u128(7));
        let owner = |signal, by, tenant| alert_owner(signal, by, tenant);
        assert_eq!(
            owner(Signal::HourlyTokens, Dimension::Tenant, Some(t)),
            Some(t)
        );
        assert_eq!(
            owner(Signal::BudgetUtilisation, Dimension::Tenant, Some(t)),
            Some(t)
        );
        assert_eq!(
            owner(Signal::HourlyTokens, Dimension::Total, None),
            PLATFORM
        );
        assert_eq!(
            owner(Signal::HourlyTokens, Dimension::Model, None),
            PLATFORM
        );
        assert_eq!(owner(Signal::QueueLength, Dimension::AgentType, None), None);
        assert_eq!(owner(Signal::ErrorRate, Dimension::Model, None), None);
        // A tenant rule without its tenant names nobody a tenant may read.
        assert_eq!(
            owner(Signal::HourlyTokens, Dimension::Tenant, None),
            PLATFORM
        );
    }

    #[test]
    fn kind_names_are_pinned() {
        use crate::enum_names::assert_names;
        use strum::IntoEnumIterator;
        assert_names(
            &[
                (EventKind::Instance, "instance"),
                (EventKind::Scale, "scale"),
                (EventKind::Provisioner, "provisioner"),
                (EventKind::Alert, "alert"),
                (EventKind::Budget, "budget"),
                (EventKind::Leader, "leader"),
            ],
            EventKind::as_str,
            |name| name.parse().ok(),
        );
        assert_eq!(
            EventKind::ALL.to_vec(),
            EventKind::iter().collect::<Vec<_>>()
        );
        assert_eq!(EventKind::Scale.to_string(), "scale");
        let err = "weather".parse::<EventKind>().err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("unknown event kind `weather`"));
    }
}
