//! `[scheduler.max_priority]`: the highest task priority each role's keys may submit with.
//!
//! Priority orders the queue (higher first) and decides what emergency mode sheds (below 5), so
//! a tenant that could pick any priority could jump every queue and step around shedding. By
//! default submitters may use up to the default priority (5); operators and admins every one.

use super::{ConfigError, invalid};
use crate::auth::Role;
use crate::task::{PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN};
use serde::{Deserialize, Serialize};

/// The highest priority per role (0-9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaxPriority {
    pub admin: i32,
    pub operator: i32,
    /// Submitter keys (and any other role that may submit).
    pub submitter: i32,
}

impl Default for MaxPriority {
    fn default() -> Self {
        MaxPriority {
            admin: PRIORITY_MAX,
            operator: PRIORITY_MAX,
            submitter: PRIORITY_DEFAULT,
        }
    }
}

impl MaxPriority {
    /// The highest priority a key of `role` may submit with.
    pub fn for_role(&self, role: Role) -> i32 {
        match role {
            Role::Admin => self.admin,
            Role::Operator => self.operator,
            Role::Submitter | Role::Agent | Role::Viewer => self.submitter,
        }
    }
}

pub(super) fn validate(raw: &MaxPriority) -> Result<MaxPriority, ConfigError> {
    for (role, value) in [
        ("admin", raw.admin),
        ("operator", raw.operator),
        ("submitter", raw.submitter),
    ] {
        if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&value) {
            return Err(invalid(
                &format!("scheduler.max_priority.{role}"),
                format!("must be between {PRIORITY_MIN} and {PRIORITY_MAX}"),
            ));
        }
    }
    Ok(*raw)
}
