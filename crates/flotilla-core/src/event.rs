//! Fleet events: every state change of an instance, every autoscaling decision and every action
//! of a provisioner, each with its reason (docs/design.md §5). The shell logs them and keeps them in the
//! store, where `GET /v1/events` reads them.

use crate::Timestamp;
use crate::id::AgentId;
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
