//! Per-minute limits of model calls (requests and tokens, per tenant and per key) and the
//! per-hour cost cap per tenant, as token buckets with reservation
//! ([`flotilla_core::quota::Bucket`]): a call takes its request, its `max_tokens` (or the model's
//! default) and its price ceiling up front, and the actual usage is settled afterwards.
//!
//! The buckets live in this process; across replicas they are per replica (issue: shared limits
//! on PostgreSQL), which docs/configuration.md says.

use flotilla_core::Timestamp;
use flotilla_core::config::GatewayLimits;
use flotilla_core::id::TenantId;
use flotilla_core::money::Money;
use flotilla_core::quota::Bucket;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
/// Buckets kept before idle ones are dropped.
const MAX_BUCKETS: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Subject {
    TenantRequests(TenantId),
    TenantTokens(TenantId),
    TenantCost(TenantId),
    KeyRequests(u64),
    KeyTokens(u64),
}

/// What a call took, to be settled.
#[derive(Clone, Debug)]
pub struct Taken {
    tenant: TenantId,
    key: u64,
    tokens: u64,
    cost: Money,
}

/// The gateway's buckets.
pub struct Limits {
    config: GatewayLimits,
    buckets: Mutex<HashMap<Subject, Bucket>>,
}

/// A refused call: which limit and when to retry.
#[derive(Debug)]
pub struct Limited {
    pub message: String,
    pub retry_after: Duration,
}

fn key_hash(key_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key_id.hash(&mut h);
    h.finish()
}

impl Limits {
    pub fn new(config: GatewayLimits) -> Limits {
        Limits {
            config,
            buckets: Mutex::default(),
        }
    }

    /// True when no limit is configured (the call skips this step).
    pub fn is_off(&self) -> bool {
        self.config == GatewayLimits::default()
    }

    /// Takes one request, `tokens` tokens and `cost` from every applicable bucket, all or none.
    pub fn take(
        &self,
        tenant: TenantId,
        key_id: &str,
        tokens: u64,
        cost: Money,
        now: Timestamp,
    ) -> Result<Taken, Limited> {
        let key = key_hash(key_id);
        let c = self.config;
        let cost_units = u64::try_from(cost.pico()).unwrap_or(0);
        let wanted: Vec<(Subject, u64, u64, Duration, String)> = [
            c.tenant_requests_per_minute.map(|l| {
                (
                    Subject::TenantRequests(tenant),
                    u64::from(l),
                    1,
                    MINUTE,
                    format!("{l} model calls per minute for the tenant"),
                )
            }),
            c.tenant_tokens_per_minute.map(|l| {
                (
                    Subject::TenantTokens(tenant),
                    l,
                    tokens,
                    MINUTE,
                    format!("{l} tokens per minute for the tenant"),
                )
            }),
            c.tenant_cost_per_hour.map(|l| {
                (
                    Subject::TenantCost(tenant),
                    u64::try_from(l.pico()).unwrap_or(0),
                    cost_units,
                    HOUR,
                    format!("${l} of model spend per hour for the tenant"),
                )
            }),
            c.key_requests_per_minute.map(|l| {
                (
                    Subject::KeyRequests(key),
                    u64::from(l),
                    1,
                    MINUTE,
                    format!("{l} model calls per minute for the key"),
                )
            }),
            c.key_tokens_per_minute.map(|l| {
                (
                    Subject::KeyTokens(key),
                    l,
                    tokens,
                    MINUTE,
                    format!("{l} tokens per minute for the key"),
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        let taken = Taken {
            tenant,
            key,
            tokens,
            cost,
        };
        if wanted.is_empty() {
            return Ok(taken);
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(taken);
        };
        if buckets.len() > MAX_BUCKETS {
            buckets.retain(|_, b| b.available(now) < 0);
        }
        // Check all first (on copies), then take from all: a refused call takes nothing.
        for (subject, capacity, n, period, what) in &wanted {
            let mut b = *buckets
                .entry(*subject)
                .or_insert_with(|| Bucket::new(*capacity, *period, now));
            if let Err(retry_after) = b.take(*n, now) {
                return Err(Limited {
                    message: format!(
                        "the limit of {what} is reached; retry in {} s",
                        retry_after.as_secs().max(1)
                    ),
                    retry_after,
                });
            }
        }
        for (subject, _, n, _, _) in &wanted {
            if let Some(b) = buckets.get_mut(subject) {
                let _ = b.take(*n, now);
            }
        }
        Ok(taken)
    }

    /// Settles what a call took with what it used.
    pub fn settle(&self, taken: &Taken, tokens: u64, cost: Money, now: Timestamp) {
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        for (subject, reserved, actual) in [
            (Subject::TenantTokens(taken.tenant), taken.tokens, tokens),
            (Subject::KeyTokens(taken.key), taken.tokens, tokens),
            (
                Subject::TenantCost(taken.tenant),
                u64::try_from(taken.cost.pico()).unwrap_or(0),
                u64::try_from(cost.pico()).unwrap_or(0),
            ),
        ] {
            if let Some(b) = buckets.get_mut(&subject) {
                b.settle(reserved, actual, now);
            }
        }
    }
}
