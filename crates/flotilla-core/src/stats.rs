//! Per-instance statistics: a peak-EWMA latency estimate and the outcomes of the instance's own
//! recent attempts (docs/design.md §5). Each instance has its own; nothing is shared across a pool.
//!
//! Peak EWMA (as in Finagle and linkerd2-proxy): a slower observation than the estimate replaces
//! it at once, a faster one pulls it down exponentially with the time since the last observation,
//! so an instance that slows down is avoided immediately and trusted again gradually.

use crate::Timestamp;
use std::collections::VecDeque;
use std::time::Duration;

/// Decay time constant of the latency estimate.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);
/// Most outcomes kept per instance, whatever the window.
pub const MAX_OUTCOMES: usize = 1024;

/// Statistics of one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceStats {
    decay: Duration,
    window: Duration,
    /// Latency estimate in milliseconds; `None` before the first observation.
    ewma_ms: Option<f64>,
    last_observed: Option<Timestamp>,
    /// Outcomes in the window, oldest first: (when, succeeded).
    outcomes: VecDeque<(Timestamp, bool)>,
    failures_in_window: u32,
    consecutive_failures: u32,
}

impl InstanceStats {
    /// Empty statistics keeping outcomes for `window`.
    pub fn new(window: Duration) -> Self {
        Self::with_decay(window, DEFAULT_DECAY)
    }

    /// Empty statistics with a given latency decay.
    pub fn with_decay(window: Duration, decay: Duration) -> Self {
        Self {
            decay,
            window,
            ewma_ms: None,
            last_observed: None,
            outcomes: VecDeque::new(),
            failures_in_window: 0,
            consecutive_failures: 0,
        }
    }

    /// Records an attempt that ended at `now` after `latency`. Failures the instance is not to
    /// blame for (a task's own bad input) should not be recorded as failures.
    pub fn observe(&mut self, now: Timestamp, latency: Duration, succeeded: bool) {
        let rtt = latency.as_secs_f64() * 1000.0;
        self.ewma_ms = Some(match (self.ewma_ms, self.last_observed) {
            (Some(cost), _) if rtt > cost => rtt,
            (Some(cost), Some(last)) => {
                let elapsed = (now - last).to_std().unwrap_or_default().as_secs_f64();
                let w = (-elapsed / self.decay.as_secs_f64().max(1e-9)).exp();
                cost * w + rtt * (1.0 - w)
            }
            _ => rtt,
        });
        self.last_observed = Some(now);
        self.outcomes.push_back((now, succeeded));
        if succeeded {
            self.consecutive_failures = 0;
        } else {
            self.failures_in_window += 1;
            self.consecutive_failures += 1;
        }
        while self.outcomes.len() > MAX_OUTCOMES {
            self.pop_oldest();
        }
        self.prune(now);
    }

    fn pop_oldest(&mut self) {
        if let Some((_, ok)) = self.outcomes.pop_front()
            && !ok
        {
            self.failures_in_window -= 1;
        }
    }

    /// Forgets outcomes older than the window.
    pub fn prune(&mut self, now: Timestamp) {
        let window = chrono::Duration::from_std(self.window).unwrap_or(chrono::Duration::MAX);
        while self
            .outcomes
            .front()
            .is_some_and(|(at, _)| now - *at > window)
        {
            self.pop_oldest();
        }
    }

    /// Forgets every outcome (after an ejection ends the instance starts with a clean slate);
    /// the latency estimate stays.
    pub fn reset_outcomes(&mut self) {
        self.outcomes.clear();
        self.failures_in_window = 0;
        self.consecutive_failures = 0;
    }

    /// The latency estimate in milliseconds, if any attempt was observed.
    pub fn latency_ms(&self) -> Option<f64> {
        self.ewma_ms
    }

    /// Attempts in the window (as of the last prune).
    pub fn requests(&self) -> u32 {
        self.outcomes.len() as u32
    }

    /// Failed attempts in the window (as of the last prune).
    pub fn failures(&self) -> u32 {
        self.failures_in_window
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Share of successful attempts in the window; `None` when there were none.
    pub fn success_rate(&self) -> Option<f64> {
        let n = self.requests();
        (n > 0).then(|| f64::from(n - self.failures_in_window) / f64::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(ms: i64) -> Timestamp {
        Utc.timestamp_millis_opt(1_700_000_000_000 + ms)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn a_slow_answer_raises_the_estimate_at_once_and_fast_ones_lower_it_gradually() {
        let mut s = InstanceStats::new(Duration::from_secs(60));
        s.observe(at(0), Duration::from_millis(10), true);
        assert_eq!(s.latency_ms(), Some(10.0));
        s.observe(at(100), Duration::from_millis(500), true);
        assert_eq!(s.latency_ms(), Some(500.0));
        s.observe(at(1_100), Duration::from_millis(10), true);
        let after_one_second = s.latency_ms().unwrap_or_default();
        assert!(after_one_second > 400.0 && after_one_second < 500.0);
        s.observe(at(60_000), Duration::from_millis(10), true);
        assert!(s.latency_ms().unwrap_or_default() < 15.0);
    }

    #[test]
    fn success_rate_counts_only_the_window() {
        let mut s = InstanceStats::new(Duration::from_secs(10));
        for i in 0..4 {
            s.observe(at(i * 1000), Duration::from_millis(5), false);
        }
        assert_eq!(s.success_rate(), Some(0.0));
        assert_eq!(s.consecutive_failures(), 4);
        s.observe(at(20_000), Duration::from_millis(5), true);
        assert_eq!(s.requests(), 1);
        assert_eq!(s.success_rate(), Some(1.0));
        assert_eq!(s.consecutive_failures(), 0);
    }

    #[test]
    fn keeps_a_bounded_number_of_outcomes() {
        let mut s = InstanceStats::new(Duration::from_secs(3600));
        for i in 0..(MAX_OUTCOMES as i64 + 100) {
            s.observe(at(i), Duration::from_millis(1), i % 2 == 0);
        }
        assert_eq!(s.requests() as usize, MAX_OUTCOMES);
        assert_eq!(s.failures() as usize, MAX_OUTCOMES / 2);
    }
}
