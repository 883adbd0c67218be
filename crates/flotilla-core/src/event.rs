//! Fleet events: every state change of an instance, every autoscaling decision and every action
//! of a provisioner, each with its reason (docs/design.md §5). The shell logs them and keeps them in the
//! store, where `GET /v1/events` reads them.

use crate::Timestamp;
use crate::id::AgentId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
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
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Instance => "instance",
            EventKind::Scale => "scale",
            EventKind::Provisioner => "provisioner",
            EventKind::Alert => "alert",
            EventKind::Budget => "budget",
            EventKind::Leader => "leader",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event kind name that is not one of [`EventKind::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown event kind `{0}`")]
pub struct UnknownEventKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownEventKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownEventKind(s.to_owned()))
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
    fn kinds_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>().ok(), Some(kind));
        }
    }
}
