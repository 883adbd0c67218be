//! Per-minute limits of model calls (requests and tokens, per tenant and per key) and the
//! per-hour cost cap per tenant, as token buckets with reservation
//! ([`flotilla_core::quota::Bucket`]): a call takes its request, its `max_tokens` (or the model's
//! default) and its price ceiling up front, and the actual usage is settled afterwards.
//!
//! Where the buckets live depends on the store, as for budgets. With SQLite (one control plane by
//! design) they are in this process, and the hot path takes no disk write. With PostgreSQL they
//! are rows shared by every replica ([`flotilla_store::UsageStore::take_buckets`]), so a limit holds
//! across replicas instead of multiplying by their number (docs/design.md §7). Either way every
//! decision is [`flotilla_core::quota`]'s; this module names the buckets and carries the result.
//!
//! Buckets are named by subject: `tenant-req:<tenant>`, `tenant-tok:<tenant>`,
//! `tenant-cost:<tenant>`, `key-req:<key id>`, `key-tok:<key id>`. A bucket that is not there is
//! full, so forgetting full buckets (in memory past [`MAX_BUCKETS`], in the store after an idle
//! hour) never changes a decision. A changed limit rescales a bucket, keeping how full it was.
//!
//! If the shared store fails, the call falls back to this process's own buckets (the limit then
//! holds per replica) rather than failing: the budgets that come next still need the database.

use flotilla_core::Timestamp;
use flotilla_core::config::GatewayLimits;
use flotilla_core::id::TenantId;
use flotilla_core::money::Money;
use flotilla_core::quota::{Bucket, take_all};
use flotilla_store::{BucketSettle, BucketTake, DynStore};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
/// In-process buckets kept before full ones are dropped.
const MAX_BUCKETS: usize = 100_000;
/// How often a replica prunes the shared buckets.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Shared buckets not written for this long may be pruned (those that are full by now): the
/// longest period, after which only a bucket in debt is not full.
const PRUNE_IDLE: Duration = HOUR;
/// Most shared buckets one pruning deletes.
const PRUNE_BATCH: u32 = 10_000;

/// What a call took, to be settled.
#[derive(Clone, Debug)]
pub(crate) struct Taken {
    tenant: TenantId,
    key_id: String,
    tokens: u64,
    cost: Money,
    /// Taken from the store's shared buckets (else from this process's).
    shared: bool,
}

/// The gateway's buckets.
pub(crate) struct Limits {
    config: GatewayLimits,
    /// This process's buckets by subject: all of them on SQLite; on PostgreSQL only while the
    /// store fails.
    local: Mutex<HashMap<String, Bucket>>,
    /// The store's shared buckets (PostgreSQL).
    shared: Option<Shared>,
}

struct Shared {
    store: DynStore,
    /// When this replica prunes the shared buckets next (`None`: at the first settlement).
    next_prune: Mutex<Option<Timestamp>>,
}

/// A refused call: which limit and when to retry.
#[derive(Debug)]
pub(crate) struct Limited {
    pub message: String,
    /// Whole seconds, rounded up: a client that waits this long finds the units there.
    pub retry_after: Duration,
}

/// One kind of bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Limit {
    TenantRequests,
    TenantTokens,
    TenantCost,
    KeyRequests,
    KeyTokens,
}

impl Limit {
    const ALL: [Limit; 5] = [
        Limit::TenantRequests,
        Limit::TenantTokens,
        Limit::TenantCost,
        Limit::KeyRequests,
        Limit::KeyTokens,
    ];

    /// Its capacity, in units, when it is configured.
    fn capacity(self, c: &GatewayLimits) -> Option<u64> {
        match self {
            Limit::TenantRequests => c.tenant_requests_per_minute.map(u64::from),
            Limit::TenantTokens => c.tenant_tokens_per_minute,
            Limit::TenantCost => c.tenant_cost_per_hour.map(pico_units),
            Limit::KeyRequests => c.key_requests_per_minute.map(u64::from),
            Limit::KeyTokens => c.key_tokens_per_minute,
        }
    }

    fn period(self) -> Duration {
        match self {
            Limit::TenantCost => HOUR,
            _ => MINUTE,
        }
    }

    fn subject(self, tenant: TenantId, key_id: &str) -> String {
        match self {
            Limit::TenantRequests => format!("tenant-req:{tenant}"),
            Limit::TenantTokens => format!("tenant-tok:{tenant}"),
            Limit::TenantCost => format!("tenant-cost:{tenant}"),
            Limit::KeyRequests => format!("key-req:{key_id}"),
            Limit::KeyTokens => format!("key-tok:{key_id}"),
        }
    }

    /// Units a call takes.
    fn units(self, tokens: u64, cost: Money) -> u64 {
        match self {
            Limit::TenantRequests | Limit::KeyRequests => 1,
            Limit::TenantTokens | Limit::KeyTokens => tokens,
            Limit::TenantCost => pico_units(cost),
        }
    }

    fn describe(self, c: &GatewayLimits) -> String {
        let n = self.capacity(c).unwrap_or_default();
        match self {
            Limit::TenantRequests => format!("{n} model calls per minute for the tenant"),
            Limit::TenantTokens => format!("{n} tokens per minute for the tenant"),
            Limit::TenantCost => format!(
                "${} of model spend per hour for the tenant",
                c.tenant_cost_per_hour.unwrap_or(Money::ZERO)
            ),
            Limit::KeyRequests => format!("{n} model calls per minute for the key"),
            Limit::KeyTokens => format!("{n} tokens per minute for the key"),
        }
    }
}

/// Money as bucket units (pico-dollars; nothing for a negative amount).
fn pico_units(m: Money) -> u64 {
    u64::try_from(m.pico()).unwrap_or(0)
}

/// The buckets are whole values, replaced at once: a panic elsewhere cannot leave one half
/// written, so a poisoned lock is still good to use.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Limits {
    /// Limits with this process's buckets (SQLite, or tests).
    pub(crate) fn new(config: GatewayLimits) -> Limits {
        Limits {
            config,
            local: Mutex::default(),
            shared: None,
        }
    }

    /// Limits with the store's shared buckets, which every replica on the database uses.
    pub(crate) fn shared(config: GatewayLimits, store: DynStore) -> Limits {
        Limits {
            shared: Some(Shared {
                store,
                next_prune: Mutex::new(None),
            }),
            ..Limits::new(config)
        }
    }

    /// Shared buckets on PostgreSQL, this process's on SQLite.
    pub(crate) fn for_store(config: GatewayLimits, store: &DynStore) -> Limits {
        if store.topology().is_shared() {
            Limits::shared(config, store.clone())
        } else {
            Limits::new(config)
        }
    }

    /// True when no limit is configured (the call skips this step).
    pub(crate) fn is_off(&self) -> bool {
        self.config == GatewayLimits::default()
    }

    /// Takes one request, `tokens` tokens and `cost` from every applicable bucket, all or none:
    /// from the shared buckets when there are, else from this process's.
    pub(crate) async fn reserve(
        &self,
        tenant: TenantId,
        key_id: &str,
        tokens: u64,
        cost: Money,
        now: Timestamp,
    ) -> Result<Taken, Limited> {
        let Some(shared) = &self.shared else {
            return self.take(tenant, key_id, tokens, cost, now);
        };
        let (limits, takes) = self.plan(tenant, key_id, tokens, cost);
        if takes.is_empty() {
            return Ok(taken(tenant, key_id, tokens, cost, false));
        }
        match shared.store.take_buckets(&takes, now).await {
            Ok(Ok(())) => Ok(taken(tenant, key_id, tokens, cost, true)),
            Ok(Err(refused)) => Err(self.limited(&limits, refused)),
            Err(e) => {
                tracing::error!(error = %e, %tenant, "Could not take from the shared rate limits; this replica's own apply");
                self.take(tenant, key_id, tokens, cost, now)
            }
        }
    }

    /// Settles what a call took with what it used, where it was taken; now and then also prunes
    /// the shared buckets.
    pub(crate) async fn reconcile(&self, taken: &Taken, tokens: u64, cost: Money, now: Timestamp) {
        let settles = self.settles(taken, tokens, cost);
        let shared = match &self.shared {
            Some(shared) if taken.shared => shared,
            _ => {
                self.settle_local(&settles, now);
                return;
            }
        };
        if !settles.is_empty()
            && let Err(e) = shared.store.settle_buckets(&settles, now).await
        {
            tracing::error!(error = %e, tenant = %taken.tenant, "Could not settle the shared rate limits");
        }
        self.prune_if_due(shared, now).await;
    }

    /// [`Limits::reserve`] from this process's buckets only, without waiting.
    fn take(
        &self,
        tenant: TenantId,
        key_id: &str,
        tokens: u64,
        cost: Money,
        now: Timestamp,
    ) -> Result<Taken, Limited> {
        let (limits, takes) = self.plan(tenant, key_id, tokens, cost);
        self.take_local(&takes, now)
            .map(|()| taken(tenant, key_id, tokens, cost, false))
            .map_err(|refused| self.limited(&limits, refused))
    }

    /// The configured buckets a call takes from, and what it takes.
    fn plan(
        &self,
        tenant: TenantId,
        key_id: &str,
        tokens: u64,
        cost: Money,
    ) -> (Vec<Limit>, Vec<BucketTake>) {
        Limit::ALL
            .into_iter()
            .filter_map(|limit| {
                let capacity = limit.capacity(&self.config)?;
                Some((
                    limit,
                    BucketTake {
                        subject: limit.subject(tenant, key_id),
                        capacity,
                        period: limit.period(),
                        n: limit.units(tokens, cost),
                    },
                ))
            })
            .unzip()
    }

    /// The reservations of a call to reconcile: those whose use differed from the reservation.
    fn settles(&self, taken: &Taken, tokens: u64, cost: Money) -> Vec<BucketSettle> {
        [Limit::TenantTokens, Limit::KeyTokens, Limit::TenantCost]
            .into_iter()
            .filter_map(|limit| {
                let capacity = limit.capacity(&self.config)?;
                let reserved = limit.units(taken.tokens, taken.cost);
                let actual = limit.units(tokens, cost);
                (reserved != actual).then(|| BucketSettle {
                    subject: limit.subject(taken.tenant, &taken.key_id),
                    capacity,
                    period: limit.period(),
                    reserved,
                    actual,
                })
            })
            .collect()
    }

    fn limited(&self, limits: &[Limit], (index, retry_after): (usize, Duration)) -> Limited {
        let secs = retry_after
            .as_secs()
            .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
            .max(1);
        let what = limits
            .get(index)
            .map_or_else(|| "a rate limit".to_owned(), |l| l.describe(&self.config));
        Limited {
            message: format!("the limit of {what} is reached; retry in {secs} s"),
            retry_after: Duration::from_secs(secs),
        }
    }

    fn take_local(&self, takes: &[BucketTake], now: Timestamp) -> Result<(), (usize, Duration)> {
        if takes.is_empty() {
            return Ok(());
        }
        let mut buckets = lock(&self.local);
        if buckets.len() > MAX_BUCKETS {
            buckets.retain(|_, b| !b.is_full(now));
        }
        let mut held: Vec<(Bucket, u64)> = takes
            .iter()
            .map(|t| {
                let stored = buckets.get(&t.subject).copied();
                (Bucket::resume(stored, t.capacity, t.period, now), t.n)
            })
            .collect();
        take_all(&mut held, now)?;
        for (t, (bucket, _)) in takes.iter().zip(held) {
            buckets.insert(t.subject.clone(), bucket);
        }
        Ok(())
    }

    fn settle_local(&self, settles: &[BucketSettle], now: Timestamp) {
        if settles.is_empty() {
            return;
        }
        let mut buckets = lock(&self.local);
        for s in settles {
            let stored = buckets.get(&s.subject).copied();
            let mut bucket = Bucket::resume(stored, s.capacity, s.period, now);
            bucket.settle(s.reserved, s.actual, now);
            buckets.insert(s.subject.clone(), bucket);
        }
    }

    /// Prunes the shared buckets if this replica has not for [`PRUNE_EVERY`].
    async fn prune_if_due(&self, shared: &Shared, now: Timestamp) {
        {
            let mut next = lock(&shared.next_prune);
            if next.is_some_and(|at| now < at) {
                return;
            }
            *next = chrono::Duration::from_std(PRUNE_EVERY)
                .ok()
                .and_then(|every| now.checked_add_signed(every));
        }
        let Some(idle_before) = chrono::Duration::from_std(PRUNE_IDLE)
            .ok()
            .and_then(|idle| now.checked_sub_signed(idle))
        else {
            return;
        };
        match shared
            .store
            .prune_buckets(idle_before, now, PRUNE_BATCH)
            .await
        {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "Pruned idle rate-limit buckets"),
            Err(e) => tracing::warn!(error = %e, "Could not prune idle rate-limit buckets"),
        }
    }
}

fn taken(tenant: TenantId, key_id: &str, tokens: u64, cost: Money, shared: bool) -> Taken {
    Taken {
        tenant,
        key_id: key_id.to_owned(),
        tokens,
        cost,
        shared,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Timestamp {
        chrono::DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn limits() -> Limits {
        Limits::new(GatewayLimits {
            tenant_requests_per_minute: Some(3),
            key_tokens_per_minute: Some(1000),
            ..GatewayLimits::default()
        })
    }

    #[test]
    fn a_refused_call_takes_nothing_and_says_which_limit() {
        let l = limits();
        let tenant = TenantId(uuid::Uuid::nil());
        l.take(tenant, "k1", 900, Money::ZERO, t(0)).unwrap();
        // The key's tokens refuse: the tenant's request is not taken either.
        let refused = l.take(tenant, "k1", 200, Money::ZERO, t(0)).unwrap_err();
        assert_eq!(
            refused.message,
            "the limit of 1000 tokens per minute for the key is reached; retry in 6 s"
        );
        assert_eq!(refused.retry_after, Duration::from_secs(6));
        l.take(tenant, "k2", 1, Money::ZERO, t(0)).unwrap();
        l.take(tenant, "k3", 1, Money::ZERO, t(0)).unwrap();
        let refused = l.take(tenant, "k4", 1, Money::ZERO, t(1)).unwrap_err();
        assert!(
            refused
                .message
                .contains("3 model calls per minute for the tenant")
        );
        // 19.999 s, rounded up.
        assert_eq!(refused.retry_after, Duration::from_secs(20));
    }

    #[test]
    fn a_settlement_gives_back_what_was_not_used() {
        let l = limits();
        let tenant = TenantId(uuid::Uuid::nil());
        let taken = l.take(tenant, "k1", 900, Money::ZERO, t(0)).unwrap();
        l.settle_local(&l.settles(&taken, 100, Money::ZERO), t(0));
        l.take(tenant, "k1", 900, Money::ZERO, t(0)).unwrap();
    }
}
