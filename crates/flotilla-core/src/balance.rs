//! Choosing the instance that gets a task.
//!
//! Only least-loaded selection exists for now (the other strategies of DESIGN.md §5 come with the
//! fleet issue and will sit beside it as pure functions over the same [`Candidate`]s).

use crate::agent::AgentStatus;
use crate::id::AgentId;

/// What the balancer needs to know of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: AgentId,
    pub status: AgentStatus,
    pub capacity: u32,
    /// Tasks in flight on it.
    pub load: u32,
}

impl Candidate {
    /// True when the instance may take one more task.
    pub fn has_room(&self) -> bool {
        self.status.accepts_work() && self.load < self.capacity
    }
}

/// The candidate with the lowest utilisation (load / capacity) that has room, preferring ones not
/// in `avoid` (instances a retried task already failed on). Ties go to the lower free capacity
/// index order given, so callers can rotate the slice for fairness.
pub fn least_loaded(candidates: &[Candidate], avoid: &[AgentId]) -> Option<AgentId> {
    let pick = |skip_avoided: bool| {
        candidates
            .iter()
            .filter(|c| c.has_room() && !(skip_avoided && avoid.contains(&c.id)))
            // Compare load/capacity as fractions without floating point: a/b < c/d <=> a*d < c*b.
            .min_by(|a, b| {
                (u64::from(a.load) * u64::from(b.capacity))
                    .cmp(&(u64::from(b.load) * u64::from(a.capacity)))
            })
            .map(|c| c.id)
    };
    pick(true).or_else(|| pick(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn candidate(n: u128, status: AgentStatus, capacity: u32, load: u32) -> Candidate {
        Candidate {
            id: AgentId(Uuid::from_u128(n)),
            status,
            capacity,
            load,
        }
    }

    #[test]
    fn picks_the_lowest_utilisation() {
        let cs = [
            candidate(1, AgentStatus::Busy, 4, 2),
            candidate(2, AgentStatus::Busy, 10, 3),
            candidate(3, AgentStatus::Busy, 2, 1),
        ];
        assert_eq!(least_loaded(&cs, &[]), Some(cs[1].id));
    }

    #[test]
    fn avoids_instances_already_tried_when_another_has_room() {
        let cs = [
            candidate(1, AgentStatus::Idle, 4, 0),
            candidate(2, AgentStatus::Busy, 4, 3),
        ];
        assert_eq!(least_loaded(&cs, &[cs[0].id]), Some(cs[1].id));
        assert_eq!(least_loaded(&cs[..1], &[cs[0].id]), Some(cs[0].id));
    }

    #[test]
    fn never_picks_full_or_unavailable_instances() {
        let cs = [
            candidate(1, AgentStatus::Busy, 2, 2),
            candidate(2, AgentStatus::Draining, 2, 0),
            candidate(3, AgentStatus::Failed, 2, 0),
        ];
        assert_eq!(least_loaded(&cs, &[]), None);
    }

    proptest! {
        #[test]
        fn choice_always_has_room(specs in proptest::collection::vec((0usize..7, 1u32..8, 0u32..9), 0..30)) {
            let cs: Vec<_> = specs.iter().enumerate()
                .map(|(i, (s, cap, load))| candidate(i as u128, AgentStatus::ALL[*s], *cap, *load))
                .collect();
            match least_loaded(&cs, &[]) {
                Some(id) => {
                    let chosen = cs.iter().find(|c| c.id == id);
                    prop_assert!(chosen.is_some_and(|c| c.has_room()));
                }
                None => prop_assert!(cs.iter().all(|c| !c.has_room())),
            }
        }
    }
}
