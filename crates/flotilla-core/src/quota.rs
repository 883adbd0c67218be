//! A token bucket with reservation and reconciliation: the gateway's per-minute request and token
//! limits and its per-hour cost cap (DESIGN.md §7). A call takes what it may use (its
//! `max_tokens`, its price ceiling) before it runs and gives back, or pays, the difference once
//! the actual usage is known.
//!
//! The bucket holds `capacity` units and refills at `capacity` per `period`, exactly: the level
//! is kept in units × period-milliseconds, so no refill is lost to rounding.

use crate::Timestamp;
use std::time::Duration;

/// One bucket's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    capacity: i64,
    period_ms: i64,
    /// Units × period_ms; may go below zero when actual usage exceeds a reservation (a debt that
    /// refills like anything else).
    level: i128,
    updated: Timestamp,
}

impl Bucket {
    /// A full bucket.
    pub fn new(capacity: u64, period: Duration, now: Timestamp) -> Bucket {
        let period_ms = i64::try_from(period.as_millis()).unwrap_or(i64::MAX).max(1);
        let capacity = i64::try_from(capacity).unwrap_or(i64::MAX);
        Bucket {
            capacity,
            period_ms,
            level: i128::from(capacity) * i128::from(period_ms),
            updated: now,
        }
    }

    fn full(&self) -> i128 {
        i128::from(self.capacity) * i128::from(self.period_ms)
    }

    fn refill(&mut self, now: Timestamp) {
        let elapsed = (now - self.updated).num_milliseconds();
        if elapsed > 0 {
            self.level =
                (self.level + i128::from(self.capacity) * i128::from(elapsed)).min(self.full());
            self.updated = now;
        }
    }

    /// Takes `n` units, or says how long until they are there. A request larger than the whole
    /// capacity passes when the bucket is full (and leaves it in debt), so it is never refused
    /// forever.
    pub fn take(&mut self, n: u64, now: Timestamp) -> Result<(), Duration> {
        self.refill(now);
        let want = i128::from(n) * i128::from(self.period_ms);
        if want <= self.level || self.level >= self.full() {
            self.level -= want;
            return Ok(());
        }
        let missing = want.min(self.full()) - self.level;
        // Time to refill `missing`: missing / capacity milliseconds, rounded up.
        let ms = if self.capacity == 0 {
            i128::from(self.period_ms)
        } else {
            (missing + i128::from(self.capacity) - 1) / i128::from(self.capacity)
        };
        Err(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
    }

    /// Reconciles a reservation: gives back `reserved − actual` units, or takes the excess.
    pub fn settle(&mut self, reserved: u64, actual: u64, now: Timestamp) {
        self.refill(now);
        let delta = (i128::from(reserved) - i128::from(actual)) * i128::from(self.period_ms);
        self.level = (self.level + delta).min(self.full());
    }

    /// Units available now (rounded down).
    pub fn available(&self, now: Timestamp) -> i64 {
        let mut b = *self;
        b.refill(now);
        i64::try_from(b.level / i128::from(b.period_ms)).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(ms: i64) -> Timestamp {
        chrono::DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn takes_refills_and_says_when_to_retry() {
        let mut b = Bucket::new(60, Duration::from_secs(60), t(0));
        assert!(b.take(60, t(0)).is_ok());
        // One unit per second refills.
        assert_eq!(b.take(1, t(0)), Err(Duration::from_millis(1000)));
        assert_eq!(b.take(1, t(500)), Err(Duration::from_millis(500)));
        assert!(b.take(1, t(1000)).is_ok());
    }

    #[test]
    fn reservations_are_reconciled_both_ways() {
        let mut b = Bucket::new(1000, Duration::from_secs(60), t(0));
        b.take(800, t(0)).unwrap();
        b.settle(800, 100, t(0));
        assert_eq!(b.available(t(0)), 900);
        b.take(900, t(0)).unwrap();
        b.settle(100, 400, t(0));
        assert_eq!(b.available(t(0)), -300);
        assert!(b.take(1, t(0)).is_err());
    }

    #[test]
    fn an_oversized_request_passes_on_a_full_bucket() {
        let mut b = Bucket::new(10, Duration::from_secs(60), t(0));
        assert!(b.take(50, t(0)).is_ok());
        assert!(b.take(1, t(60_000)).is_err());
        assert!(b.take(1, t(300_000)).is_ok());
    }

    proptest! {
        /// Over any run, no more than capacity + refill can be taken.
        #[test]
        fn never_more_than_capacity_plus_refill(steps in proptest::collection::vec((0_i64..2000, 1_u64..30), 1..300)) {
            let mut b = Bucket::new(100, Duration::from_secs(60), t(0));
            let mut now = 0;
            let mut taken = 0_u64;
            for (dt, n) in steps {
                now += dt;
                if b.take(n, t(now)).is_ok() { taken += n; }
            }
            let refill = u64::try_from(now).unwrap() * 100 / 60_000;
            prop_assert!(taken <= 100 + refill + 1);
        }
    }
}
