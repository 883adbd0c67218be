//! Health decisions (docs/design.md §5): active checks with hysteresis, and passive outlier ejection.
//!
//! Active checks: an instance turns unhealthy after `unhealthy_threshold` consecutive failed
//! checks and healthy again after `healthy_threshold` consecutive good ones, so one lost probe
//! does not flap it. Outlier ejection (after Envoy's): an instance whose own recent attempts fail
//! too often — an error ratio over a window with a minimum number of requests, or a run of
//! consecutive failures — is ejected for a time that grows with each repeat offence, but never
//! more than a configured share of a pool at once.

use crate::Timestamp;
use crate::stats::InstanceStats;
use std::time::Duration;

/// Thresholds of active checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckThresholds {
    /// Consecutive failed checks that make a healthy instance unhealthy.
    pub unhealthy: u32,
    /// Consecutive good checks that make an unhealthy instance healthy.
    pub healthy: u32,
}

/// The hysteresis state of one instance's active checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckState {
    healthy: bool,
    /// Consecutive results disagreeing with `healthy`.
    streak: u32,
}

impl Default for CheckState {
    /// New instances start healthy: they registered themselves, so they answered recently.
    fn default() -> Self {
        Self {
            healthy: true,
            streak: 0,
        }
    }
}

impl CheckState {
    /// Whether the instance counts as healthy.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check's result; returns the new health when it changed.
    pub fn observe(&mut self, ok: bool, thresholds: CheckThresholds) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy {
            thresholds.unhealthy
        } else {
            thresholds.healthy
        };
        if self.streak >= needed.max(1) {
            self.healthy = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

/// Outlier ejection settings of a pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierPolicy {
    /// Attempts in the statistics window needed before the error ratio counts.
    pub min_requests: u32,
    /// Error ratio (failed / attempts in the window) at or above which an instance is ejected.
    pub max_error_ratio: f64,
    /// Consecutive failures that eject an instance whatever the ratio (0 disables).
    pub consecutive_failures: u32,
    /// Ejection time of a first offence; the n-th offence is ejected n times as long.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Largest share of a pool's instances ejected at once, 0 to 1.
    pub max_ejected_share: f64,
}

/// Why an instance should be ejected, or `None` when it behaves.
pub fn outlier_reason(stats: &InstanceStats, policy: &OutlierPolicy) -> Option<String> {
    let streak = stats.consecutive_failures();
    if policy.consecutive_failures > 0 && streak >= policy.consecutive_failures {
        return Some(format!("{streak} consecutive failures"));
    }
    let requests = stats.requests();
    if requests >= policy.min_requests.max(1) {
        let ratio = f64::from(stats.failures()) / f64::from(requests);
        if ratio >= policy.max_error_ratio {
            return Some(format!(
                "error ratio {ratio:.2} ≥ {:.2} over {requests} requests",
                policy.max_error_ratio
            ));
        }
    }
    None
}

/// How long the `offences`-th ejection lasts (1 for the first).
pub fn ejection_time(policy: &OutlierPolicy, offences: u32) -> Duration {
    policy
        .base_ejection
        .saturating_mul(offences.max(1))
        .min(policy.max_ejection)
}

/// True when one more of a pool's `pool_size` instances may be ejected while `ejected` already
/// are. The cap is `floor(share × size)`, but at least one in a pool of two or more, so that
/// small pools can still shed a bad instance; a pool of one never ejects its only instance.
pub fn may_eject(pool_size: usize, ejected: usize, policy: &OutlierPolicy) -> bool {
    if pool_size < 2 {
        return false;
    }
    let cap = ((pool_size as f64) * policy.max_ejected_share.clamp(0.0, 1.0)).floor() as usize;
    ejected < cap.max(1).min(pool_size - 1)
}

/// An instance's ejection record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ejection {
    /// Ejections so far (they make the next one longer).
    pub offences: u32,
    /// Ejected until then; `None` when in rotation.
    pub until: Option<Timestamp>,
}

impl Ejection {
    /// Ejects from `now`; returns when the ejection ends.
    pub fn eject(&mut self, policy: &OutlierPolicy, now: Timestamp) -> Timestamp {
        self.offences += 1;
        let until = now
            + chrono::Duration::from_std(ejection_time(policy, self.offences))
                .unwrap_or(chrono::Duration::MAX);
        self.until = Some(until);
        until
    }

    /// True (once) when an ejection has run its time at `now`; the instance returns to rotation.
    pub fn expire(&mut self, now: Timestamp) -> bool {
        match self.until {
            Some(until) if now >= until => {
                self.until = None;
                true
            }
            _ => false,
        }
    }

    /// Whether the instance is out of rotation.
    pub fn is_ejected(&self) -> bool {
        self.until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    const THRESHOLDS: CheckThresholds = CheckThresholds {
        unhealthy: 3,
        healthy: 2,
    };

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            min_requests: 10,
            max_error_ratio: 0.5,
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.5,
        }
    }

    fn at(s: i64) -> Timestamp {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn one_failed_check_does_not_flip_health() {
        let mut s = CheckState::default();
        assert_eq!(s.observe(false, THRESHOLDS), None);
        assert_eq!(s.observe(false, THRESHOLDS), None);
        assert_eq!(s.observe(true, THRESHOLDS), None);
        assert_eq!(s.observe(false, THRESHOLDS), None);
        assert_eq!(s.observe(false, THRESHOLDS), None);
        assert_eq!(s.observe(false, THRESHOLDS), Some(false));
        assert!(!s.healthy());
        assert_eq!(s.observe(true, THRESHOLDS), None);
        assert_eq!(s.observe(true, THRESHOLDS), Some(true));
    }

    #[test]
    fn ejects_on_error_ratio_only_with_enough_requests() {
        let mut stats = InstanceStats::new(Duration::from_secs(60));
        for i in 0..9 {
            stats.observe(at(i), Duration::from_millis(5), i % 2 == 0);
        }
        assert_eq!(outlier_reason(&stats, &policy()), None, "9 requests < 10");
        stats.observe(at(9), Duration::from_millis(5), false);
        let reason = outlier_reason(&stats, &policy()).unwrap_or_default();
        assert!(reason.starts_with("error ratio 0.50"), "{reason}");
    }

    #[test]
    fn ejects_on_consecutive_failures() {
        let mut stats = InstanceStats::new(Duration::from_secs(60));
        for i in 0..5 {
            stats.observe(at(i), Duration::from_millis(5), false);
        }
        assert_eq!(
            outlier_reason(&stats, &policy()).as_deref(),
            Some("5 consecutive failures")
        );
    }

    #[test]
    fn ejection_grows_with_offences_up_to_the_cap() {
        let p = policy();
        let mut e = Ejection::default();
        assert_eq!(e.eject(&p, at(0)), at(30));
        assert!(!e.expire(at(29)));
        assert!(e.expire(at(30)));
        assert!(!e.is_ejected());
        assert_eq!(e.eject(&p, at(100)), at(160));
        for _ in 0..20 {
            e.eject(&p, at(0));
        }
        assert_eq!(e.until, Some(at(300)));
    }

    #[test]
    fn never_ejects_more_than_the_share_or_the_last_instance() {
        let p = policy();
        assert!(!may_eject(1, 0, &p));
        assert!(may_eject(2, 0, &p));
        assert!(!may_eject(2, 1, &p));
        assert!(may_eject(10, 4, &p));
        assert!(!may_eject(10, 5, &p));
        let all = OutlierPolicy {
            max_ejected_share: 1.0,
            ..p
        };
        assert!(!may_eject(3, 2, &all), "one instance always stays");
    }
}
