//! Rate limits on the API (GCRA through `governor`): per key, per tenant, and authentication
//! failures per source address. State is in memory. With several control planes on one
//! database each enforces its share of a key's or tenant's rate — the rate divided by the live
//! replicas, rounded up — so that the deployment as a whole stays within it without a database
//! round trip per request (the model gateway's limits, which guard money, are exact shared rows
//! instead). A client that talks to one replica only gets that replica's share.

use flotilla_core::id::TenantId;
use flotilla_core::rate::Rate;
use flotilla_store::DynStore;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long a tenant's configured rate is used without reading the store again.
const TENANT_TTL: Duration = Duration::from_secs(10);
/// Limiter tables are swept of idle entries when they grow past this.
const SWEEP_AT: usize = 50_000;
/// Where the failures of new sources count while the throttle tracks as many sources as it
/// may (a distributed attack): together, so memory stays bounded whatever the number of
/// sources.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
/// A full failure table is swept of forgotten sources at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Every limiter of the API.
pub(crate) struct RateLimiters {
    keys: Table<String>,
    tenants: Table<TenantId>,
    /// Failed authentications by source group (`flotilla_core::client_addr::source_group`).
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    ipv6_prefix: u8,
    /// Most sources the failure table tracks on their own ([`SWEEP_AT`]).
    sources: usize,
    last_sweep: Mutex<Instant>,
    tenant_rates: RwLock<HashMap<TenantId, (Instant, Option<Rate>)>>,
    /// Tighter rates imposed by firing alerts (`rate_limit` actions), until they resolve.
    imposed: RwLock<HashMap<TenantId, Rate>>,
    /// Control planes sharing the limits (1 on SQLite).
    replicas: std::sync::atomic::AtomicU32,
    clock: DefaultClock,
}

/// One replica's share of `rate` among `replicas`: the count divided, rounded up.
pub(crate) fn rate_share(rate: Rate, replicas: u32) -> Rate {
    let count = rate.count.get().div_ceil(replicas.max(1));
    Rate {
        count: std::num::NonZeroU32::new(count).unwrap_or(rate.count),
        per: rate.per,
    }
}

/// A limiter per key (or tenant) with the rate it was made for, so a changed rate replaces it.
struct Table<K> {
    entries: RwLock<HashMap<K, (Rate, Arc<DefaultDirectRateLimiter>)>>,
}

impl<K: Eq + Hash + Clone> Table<K> {
    fn new() -> Self {
        Table {
            entries: RwLock::default(),
        }
    }

    fn limiter(&self, key: &K, rate: Rate) -> Option<Arc<DefaultDirectRateLimiter>> {
        if let Ok(entries) = self.entries.read()
            && let Some((r, limiter)) = entries.get(key)
            && *r == rate
        {
            return Some(limiter.clone());
        }
        let limiter = Arc::new(RateLimiter::direct(quota(rate)?));
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() >= SWEEP_AT {
                // So many keys or tenants at once is rare; starting them afresh costs at most one
                // burst each.
                entries.clear();
            }
            entries.insert(key.clone(), (rate, limiter.clone()));
        }
        Some(limiter)
    }
}

/// `count` per period, with bursts of `count`.
fn quota(rate: Rate) -> Option<Quota> {
    Some(Quota::with_period(rate.interval())?.allow_burst(rate.count))
}

/// A refusal: which limit, and how long until a request would pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Limited {
    pub what: String,
    pub retry_after: Duration,
}

impl RateLimiters {
    /// Limiters with `auth_failures` per source, IPv6 sources grouped by `ipv6_prefix`.
    pub(crate) fn new(auth_failures: Option<Rate>, ipv6_prefix: u8) -> Self {
        RateLimiters {
            ipv6_prefix,
            sources: SWEEP_AT,
            last_sweep: Mutex::new(Instant::now()),
            keys: Table::new(),
            tenants: Table::new(),
            failures: auth_failures.and_then(quota).map(RateLimiter::keyed),
            blocked: Mutex::default(),
            tenant_rates: RwLock::default(),
            imposed: RwLock::default(),
            replicas: std::sync::atomic::AtomicU32::new(1),
            clock: DefaultClock::default(),
        }
    }

    /// Sets how many control planes share the limits.
    pub(crate) fn set_replicas(&self, replicas: u32) {
        self.replicas
            .store(replicas.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// This replica's share of `rate`, and how to say so.
    fn share(&self, rate: Rate) -> (Rate, String) {
        let replicas = self.replicas.load(std::sync::atomic::Ordering::Relaxed);
        let share = rate_share(rate, replicas);
        let said = if replicas > 1 {
            format!("{rate} ({share} on each of {replicas} control planes)")
        } else {
            rate.to_string()
        };
        (share, said)
    }

    /// Counts one request with a key; `rate` is the key's own or the default.
    pub(crate) fn check_key(&self, key_id: &str, rate: Option<Rate>) -> Result<(), Limited> {
        let Some(rate) = rate else { return Ok(()) };
        let (rate, said) = self.share(rate);
        self.check(self.keys.limiter(&key_id.to_owned(), rate), || {
            format!("key `{key_id}` is limited to {said}")
        })
    }

    /// Counts one request of a tenant; `rate` is the tenant's own or the default.
    pub(crate) fn check_tenant(&self, tenant: TenantId, rate: Option<Rate>) -> Result<(), Limited> {
        let Some(rate) = rate else { return Ok(()) };
        let (rate, said) = self.share(rate);
        self.check(self.tenants.limiter(&tenant, rate), || {
            format!("tenant {tenant} is limited to {said}")
        })
    }

    fn check(
        &self,
        limiter: Option<Arc<DefaultDirectRateLimiter>>,
        what: impl FnOnce() -> String,
    ) -> Result<(), Limited> {
        match limiter.map(|l| l.check()) {
            None | Some(Ok(())) => Ok(()),
            Some(Err(not_until)) => Err(Limited {
                what: what(),
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
        }
    }

    /// The group `source` counts against: its IPv6 prefix (or the address), or [`OVERFLOW`]
    /// while the table is full and the group is not blocked already. A full table is swept of
    /// forgotten sources at most every [`SWEEP_EVERY`], so a flood costs no sweep per request.
    fn group(&self, source: IpAddr, failures: &DefaultKeyedRateLimiter<IpAddr>) -> IpAddr {
        let group = flotilla_core::client_addr::source_group(source, self.ipv6_prefix);
        if failures.len() < self.sources {
            return group;
        }
        if let Ok(mut last) = self.last_sweep.lock()
            && last.elapsed() >= SWEEP_EVERY
        {
            *last = Instant::now();
            failures.retain_recent();
        }
        if failures.len() < self.sources || self.is_tracked(group) {
            group
        } else {
            OVERFLOW
        }
    }

    fn is_tracked(&self, group: IpAddr) -> bool {
        self.blocked
            .lock()
            .is_ok_and(|blocked| blocked.contains_key(&group))
    }

    /// Sources tracked by the failed-authentication throttle.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.failures.as_ref().map_or(0, |f| f.len())
    }

    /// When `source` failed to authenticate too often, how long requests from it without a
    /// valid key remain refused.
    pub(crate) fn blocked(&self, source: IpAddr) -> Option<Duration> {
        let failures = self.failures.as_ref()?;
        let group = self.group(source, failures);
        let mut blocked = self.blocked.lock().ok()?;
        let until = *blocked.get(&group)?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            blocked.remove(&group);
            return None;
        }
        Some(left)
    }

    /// Counts a failed authentication from `source`; past the rate, the source is refused until
    /// the rate admits it again.
    pub(crate) fn auth_failed(&self, source: IpAddr) {
        let Some(failures) = &self.failures else {
            return;
        };
        let group = self.group(source, failures);
        if let Err(not_until) = failures.check_key(&group) {
            let wait = not_until.wait_time_from(self.clock.now());
            if let Ok(mut blocked) = self.blocked.lock() {
                if blocked.len() >= self.sources {
                    let now = Instant::now();
                    blocked.retain(|_, until| *until > now);
                }
                blocked.insert(group, Instant::now() + wait);
            }
        }
    }

    /// A tenant's own rate, from a short-lived cache of the store.
    pub(crate) async fn tenant_rate(
        &self,
        store: &DynStore,
        tenant: TenantId,
    ) -> Result<Option<Rate>, flotilla_store::StoreError> {
        if let Ok(rates) = self.tenant_rates.read()
            && let Some((at, rate)) = rates.get(&tenant)
            && at.elapsed() < TENANT_TTL
        {
            return Ok(*rate);
        }
        let rate = store.get_tenant(tenant).await?.and_then(|t| t.rate_limit);
        if let Ok(mut rates) = self.tenant_rates.write() {
            if rates.len() >= SWEEP_AT {
                rates.retain(|_, (at, _)| at.elapsed() < TENANT_TTL);
            }
            rates.insert(tenant, (Instant::now(), rate));
        }
        Ok(rate)
    }

    /// Holds a tenant to `rate` (or releases it with `None`) whatever its configured rate,
    /// unless that is already tighter. Returns whether anything changed.
    pub(crate) fn impose(&self, tenant: TenantId, rate: Option<Rate>) -> bool {
        let Ok(mut imposed) = self.imposed.write() else {
            return false;
        };
        match rate {
            Some(rate) => imposed.insert(tenant, rate) != Some(rate),
            None => imposed.remove(&tenant).is_some(),
        }
    }

    /// The rate that applies to a tenant: its own (or the default), tightened by an imposed one.
    pub(crate) fn effective_tenant_rate(
        &self,
        tenant: TenantId,
        configured: Option<Rate>,
    ) -> Option<Rate> {
        let imposed = self
            .imposed
            .read()
            .ok()
            .and_then(|imposed| imposed.get(&tenant).copied());
        match (configured, imposed) {
            (Some(c), Some(i)) => Some(if i.interval() > c.interval() { i } else { c }),
            (c, i) => i.or(c),
        }
    }

    /// Forgets a tenant's cached rate after it changed here.
    pub(crate) fn tenant_changed(&self, tenant: TenantId) {
        if let Ok(mut rates) = self.tenant_rates.write() {
            rates.remove(&tenant);
        }
    }
}

/// Seconds for `Retry-After`: rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rate(text: &str) -> Option<Rate> {
        text.parse().ok()
    }

    #[test]
    fn replicas_enforce_their_share_of_a_rate() {
        let ten = rate("10/s").unwrap_or_else(|| panic!("a rate"));
        assert_eq!(Some(rate_share(ten, 1)), rate("10/s"));
        assert_eq!(Some(rate_share(ten, 3)), rate("4/s"), "rounded up");
        assert_eq!(Some(rate_share(ten, 20)), rate("1/s"), "never nothing");
        let limits = RateLimiters::new(None, 64);
        limits.set_replicas(2);
        let passed = (0..20)
            .filter(|_| limits.check_key("k", Some(ten)).is_ok())
            .count();
        assert_eq!(passed, 5, "a burst of this replica's share");
        let Err(refused) = limits.check_key("k", Some(ten)) else {
            panic!("the sixth request passed")
        };
        assert!(
            refused.what.contains("5/s on each of 2 control planes"),
            "{}",
            refused.what
        );
    }

    #[test]
    fn a_key_gets_its_burst_then_waits() {
        let limits = RateLimiters::new(None, 64);
        for _ in 0..3 {
            assert_eq!(limits.check_key("k", rate("3/m")), Ok(()));
        }
        let refused = limits.check_key("k", rate("3/m"));
        let Err(limited) = refused else {
            panic!("the fourth request passed")
        };
        assert!(limited.retry_after > Duration::from_secs(15));
        assert!(limited.what.contains("3/m"), "{}", limited.what);
        assert_eq!(limits.check_key("other", rate("3/m")), Ok(()), "per key");
        assert_eq!(limits.check_key("k", None), Ok(()), "no rate, no limit");
    }

    #[test]
    fn a_changed_rate_takes_effect() {
        let limits = RateLimiters::new(None, 64);
        assert_eq!(limits.check_tenant(TenantId::DEFAULT, rate("1/m")), Ok(()));
        assert!(limits.check_tenant(TenantId::DEFAULT, rate("1/m")).is_err());
        assert_eq!(
            limits.check_tenant(TenantId::DEFAULT, rate("100/s")),
            Ok(())
        );
    }

    #[test]
    fn repeated_failures_block_the_source_only() {
        let limits = RateLimiters::new(rate("2/m"), 64);
        let attacker = IpAddr::from([10, 0, 0, 1]);
        limits.auth_failed(attacker);
        limits.auth_failed(attacker);
        assert_eq!(limits.blocked(attacker), None, "within the rate");
        limits.auth_failed(attacker);
        assert!(
            limits
                .blocked(attacker)
                .is_some_and(|w| w > Duration::from_secs(20))
        );
        assert_eq!(limits.blocked(IpAddr::from([10, 0, 0, 2])), None);
    }

    #[test]
    fn ipv6_sources_count_by_their_prefix() {
        let limits = RateLimiters::new(rate("2/m"), 64);
        let v6 = |text: &str| text.parse::<IpAddr>().unwrap();
        // Three addresses of one /64 share one budget of two.
        for host in ["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:ffff::3"] {
            limits.auth_failed(v6(host));
        }
        assert!(limits.blocked(v6("2001:db8:0:1::99")).is_some());
        assert_eq!(limits.blocked(v6("2001:db8:0:2::1")), None);
    }

    #[test]
    fn the_failure_table_stays_bounded_whatever_the_number_of_sources() {
        let mut limits = RateLimiters::new(rate("1/m"), 64);
        limits.sources = 1_000;
        // Ten times the table's size in distinct sources, each failing twice (so each of the
        // first thousand is blocked on its own).
        for n in 0..10_000u32 {
            let source = IpAddr::from(n.to_be_bytes());
            limits.auth_failed(source);
            limits.auth_failed(source);
        }
        // The table: the first thousand, the overflow group and at most the blocked ones it
        // forgot and saw again.
        assert!(limits.tracked() <= 2 * 1_000 + 1, "{}", limits.tracked());
        assert!(limits.blocked.lock().unwrap().len() <= 1_000 + 1);
        assert!(limits.blocked(IpAddr::from(7u32.to_be_bytes())).is_some());
        // Sources past the table's size share the overflow budget, which they spent.
        assert!(limits.blocked(IpAddr::from([250, 0, 0, 1])).is_some());
    }

    #[test]
    fn an_imposed_rate_tightens_and_is_released() {
        let limits = RateLimiters::new(None, 64);
        let t = TenantId::DEFAULT;
        assert_eq!(
            limits.effective_tenant_rate(t, rate("100/s")),
            rate("100/s")
        );
        assert!(limits.impose(t, rate("1/s")));
        assert_eq!(limits.effective_tenant_rate(t, rate("100/s")), rate("1/s"));
        assert_eq!(limits.effective_tenant_rate(t, None), rate("1/s"));
        assert_eq!(
            limits.effective_tenant_rate(t, rate("1/m")),
            rate("1/m"),
            "a tighter own rate stays"
        );
        assert!(limits.impose(t, None));
        assert!(!limits.impose(t, None));
        assert_eq!(
            limits.effective_tenant_rate(t, rate("100/s")),
            rate("100/s")
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2500)), 3);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
    }
}
