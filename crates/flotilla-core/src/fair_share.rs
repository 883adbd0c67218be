//! Fair share of a pool's free slots between the tenants that have work queued (docs/design.md
//! §4): start-time fair queuing over tenants.
//!
//! Each tenant carries a virtual finish tag; a slot goes to the backlogged tenant whose next start
//! tag — the later of its own tag and the system's virtual clock — is the smallest, and moves that
//! tag on by `SCALE / weight`. A tenant that just arrived starts at the virtual clock, so it is
//! served at once instead of behind another tenant's backlog, and cannot bank credit while idle;
//! one that was served more than its share keeps its debt while it has work. Priority orders work
//! within a tenant only (the claim's order); between tenants, only the weights count.
//!
//! The state is kept per dispatcher (one agent type, one replica): replicas each share their own
//! slots fairly, which shares the pool fairly as a whole.

use crate::id::TenantId;
use std::collections::BTreeMap;

/// Virtual time of one slot given to a tenant of weight 1.
const SCALE: u64 = 1 << 20;
/// Largest tenant weight.
pub const MAX_WEIGHT: u32 = 1_000;

/// The fair-share state of one dispatcher.
#[derive(Clone, Debug, Default)]
pub struct FairShare {
    /// The system's virtual time: the start tag of the last slot handed out.
    clock: u64,
    /// Finish tags of backlogged tenants that are ahead of the clock (served more than their
    /// share lately). A tenant at or behind the clock is not kept: it would start at the clock
    /// anyway. So at most one entry per tenant with work queued.
    finish: BTreeMap<TenantId, u64>,
}

impl FairShare {
    /// Shares `slots` between the `backlogged` tenants (each with its weight, 1 to
    /// [`MAX_WEIGHT`]): how many slots each may fill, in the order they should be claimed, tenants
    /// given none left out. Ties go to the tenant listed first.
    pub fn plan(&mut self, slots: u32, backlogged: &[(TenantId, u32)]) -> Vec<(TenantId, u32)> {
        let mut given: Vec<(TenantId, u32)> = Vec::new();
        if backlogged.is_empty() {
            return given;
        }
        for _ in 0..slots {
            let Some(&(tenant, weight)) = backlogged
                .iter()
                .min_by_key(|(tenant, _)| self.start(*tenant))
            else {
                break;
            };
            let start = self.start(tenant);
            self.clock = start;
            self.finish.insert(tenant, start + step(weight));
            match given.iter_mut().find(|(t, _)| *t == tenant) {
                Some((_, n)) => *n += 1,
                None => given.push((tenant, 1)),
            }
        }
        // A tenant without work now is forgotten: when it has work again it starts at the clock,
        // which loses it at most the debt of its last plan (a tag never runs further ahead).
        let backlog: std::collections::HashSet<TenantId> =
            backlogged.iter().map(|(t, _)| *t).collect();
        self.finish.retain(|tenant, _| backlog.contains(tenant));
        self.prune();
        given
    }

    /// Gives back `unused` of the slots [`plan`](FairShare::plan) gave `tenant` that it had no
    /// task for, so that its share is not charged for them.
    pub fn refund(&mut self, tenant: TenantId, weight: u32, unused: u32) {
        if let Some(tag) = self.finish.get_mut(&tenant) {
            *tag = tag.saturating_sub(u64::from(unused) * step(weight));
        }
        self.prune();
    }

    /// Tenants kept in memory (backlogged ones ahead of the virtual clock).
    pub fn tracked(&self) -> usize {
        self.finish.len()
    }

    fn start(&self, tenant: TenantId) -> u64 {
        self.finish
            .get(&tenant)
            .copied()
            .unwrap_or(0)
            .max(self.clock)
    }

    fn prune(&mut self) {
        let clock = self.clock;
        self.finish.retain(|_, tag| *tag > clock);
    }
}

fn step(weight: u32) -> u64 {
    SCALE / u64::from(weight.clamp(1, MAX_WEIGHT))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn tenant(n: u128) -> TenantId {
        TenantId(Uuid::from_u128(n))
    }

    /// Hands out `rounds` slots one at a time, as a pool whose slots free one by one does.
    fn one_by_one(share: &mut FairShare, rounds: u32, backlogged: &[(TenantId, u32)]) -> Vec<u32> {
        let mut counts = vec![0; backlogged.len()];
        for _ in 0..rounds {
            for (tenant, n) in share.plan(1, backlogged) {
                let i = backlogged.iter().position(|(t, _)| *t == tenant).unwrap();
                counts[i] += n;
            }
        }
        counts
    }

    #[test]
    fn a_newcomer_is_served_next_not_behind_the_backlog() {
        let (a, b) = (tenant(1), tenant(2));
        let mut share = FairShare::default();
        // A alone for a long time banks nothing against B.
        assert_eq!(one_by_one(&mut share, 1_000, &[(a, 1)]), vec![1_000]);
        assert_eq!(share.plan(1, &[(a, 1), (b, 1)]), vec![(b, 1)]);
        assert_eq!(one_by_one(&mut share, 10, &[(a, 1), (b, 1)]), vec![5, 5]);
    }

    #[test]
    fn weights_share_slots_in_proportion() {
        let (a, b, c) = (tenant(1), tenant(2), tenant(3));
        let mut share = FairShare::default();
        let counts = one_by_one(&mut share, 600, &[(a, 1), (b, 2), (c, 3)]);
        assert_eq!(counts, vec![100, 200, 300]);
        // The same in batches.
        let mut share = FairShare::default();
        let plan = share.plan(60, &[(a, 1), (b, 2), (c, 3)]);
        assert_eq!(plan.iter().map(|(_, n)| n).sum::<u32>(), 60);
        for (t, want) in [(a, 10), (b, 20), (c, 30)] {
            assert_eq!(plan.iter().find(|(x, _)| *x == t).unwrap().1, want);
        }
    }

    #[test]
    fn unused_slots_are_not_charged() {
        let (a, b) = (tenant(1), tenant(2));
        let mut share = FairShare::default();
        // B was offered 5 of 10 slots but had one task: refunded, it is served before A next.
        let plan = share.plan(10, &[(a, 1), (b, 1)]);
        assert_eq!(plan.iter().find(|(t, _)| *t == b).unwrap().1, 5);
        let mut charged = share.clone();
        share.refund(b, 1, 4);
        assert_eq!(share.plan(1, &[(a, 1), (b, 1)]), vec![(b, 1)]);
        // Charged for slots it did not use, it would wait behind A.
        assert_eq!(charged.plan(1, &[(a, 1), (b, 1)]), vec![(a, 1)]);
    }

    #[test]
    fn memory_holds_only_backlogged_tenants() {
        let mut share = FairShare::default();
        for n in 0..10_000 {
            share.plan(1, &[(tenant(n), 1)]);
        }
        assert!(share.tracked() <= 1, "{}", share.tracked());
        assert!(share.plan(3, &[]).is_empty());
        assert!(share.plan(0, &[(tenant(1), 1)]).is_empty());
    }
}
