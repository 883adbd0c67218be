//! A token bucket with reservation and reconciliation: the gateway's per-minute request and token
//! limits and its per-hour cost cap (docs/design.md §7). A call takes what it may use (its
//! `max_tokens`, its price ceiling) before it runs and gives back, or pays, the difference once
//! the actual usage is known.
//!
//! The bucket holds `capacity` units and refills at `capacity` per `period`, exactly: the level
//! is kept in units × period-milliseconds, and a refill moves the bucket's clock by the whole
//! milliseconds it counted, so no refill is lost to rounding.
//!
//! Every decision lives here. Shared buckets (PostgreSQL) are stored as their [`BucketState`]
//! and restored exactly; the store locks the rows, calls [`Bucket::resume`] and [`take_all`] or
//! [`Bucket::settle`], and writes the result back — it does no arithmetic of its own.

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

/// Everything a [`Bucket`] is, to be stored and restored exactly ([`Bucket::state`],
/// [`Bucket::restore`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketState {
    /// Units the bucket holds when full (at least 0).
    pub capacity: i64,
    /// Time to refill from empty to full, in milliseconds (at least 1).
    pub period_ms: i64,
    /// Units × `period_ms`: at most `capacity × period_ms`, below zero for a debt.
    pub level: i128,
    /// The instant `level` was counted at.
    pub updated: Timestamp,
}

impl Bucket {
    /// A full bucket.
    pub fn new(capacity: u64, period: Duration, now: Timestamp) -> Bucket {
        let (capacity, period_ms) = config(capacity, period);
        Bucket {
            capacity,
            period_ms,
            level: i128::from(capacity) * i128::from(period_ms),
            updated: now,
        }
    }

    /// The bucket to use now for a limit of `capacity` per `period`: `stored` when there is one
    /// (rescaled if it was made for another capacity or period, see [`Bucket::reconfigured`]),
    /// else a new full bucket. A bucket dropped while full and resumed later is thus the same
    /// as one that was kept.
    pub fn resume(
        stored: Option<Bucket>,
        capacity: u64,
        period: Duration,
        now: Timestamp,
    ) -> Bucket {
        match stored {
            Some(b) => b.reconfigured(capacity, period, now),
            None => Bucket::new(capacity, period, now),
        }
    }

    /// The bucket with a new capacity and period. It keeps how full it was, as a fraction of
    /// its capacity (a debt stays the same fraction of a debt): a changed limit applies at once,
    /// without handing out a fresh burst and without turning past use into a debt. With the same
    /// period, rescaling commutes with refilling, so it does not matter when it happens. Unchanged
    /// when the configuration is the same.
    pub fn reconfigured(self, capacity: u64, period: Duration, now: Timestamp) -> Bucket {
        let (capacity, period_ms) = config(capacity, period);
        if capacity == self.capacity && period_ms == self.period_ms {
            return self;
        }
        let mut old = self;
        old.refill(now);
        let mut new = Bucket {
            capacity,
            period_ms,
            level: i128::from(capacity) * i128::from(period_ms),
            updated: old.updated,
        };
        if old.capacity > 0 {
            // level × new full / old full, rounded down; past i128 (limits near i64::MAX),
            // whole units scaled by the ratio of capacities, whose product does fit.
            let level = match old.level.checked_mul(new.full()) {
                Some(product) => product.div_euclid(old.full()),
                None => old
                    .level
                    .div_euclid(i128::from(old.period_ms))
                    .saturating_mul(i128::from(capacity))
                    .div_euclid(i128::from(old.capacity))
                    .saturating_mul(i128::from(period_ms)),
            };
            new.level = level.min(new.full());
        }
        new
    }

    /// The bucket's state, to store it.
    pub fn state(&self) -> BucketState {
        BucketState {
            capacity: self.capacity,
            period_ms: self.period_ms,
            level: self.level,
            updated: self.updated,
        }
    }

    /// The bucket a [`Bucket::state`] describes; `None` when the state is not one a bucket can
    /// be in (a negative capacity, a period under a millisecond, a level above full).
    pub fn restore(state: BucketState) -> Option<Bucket> {
        let b = Bucket {
            capacity: state.capacity,
            period_ms: state.period_ms,
            level: state.level,
            updated: state.updated,
        };
        (b.capacity >= 0 && b.period_ms >= 1 && b.level <= b.full()).then_some(b)
    }

    fn full(&self) -> i128 {
        i128::from(self.capacity) * i128::from(self.period_ms)
    }

    fn refill(&mut self, now: Timestamp) {
        let elapsed = (now - self.updated).num_milliseconds();
        if elapsed <= 0 {
            return;
        }
        let level = self
            .level
            .saturating_add(i128::from(self.capacity).saturating_mul(i128::from(elapsed)));
        if level >= self.full() {
            self.level = self.full();
            self.updated = now;
        } else {
            self.level = level;
            // Only the whole milliseconds counted: the remainder refills next time.
            self.updated = self
                .updated
                .checked_add_signed(chrono::Duration::milliseconds(elapsed))
                .unwrap_or(now);
        }
    }

    /// Takes `n` units, or says how long until they are there. A request larger than the whole
    /// capacity passes when the bucket is full (and leaves it in debt), so it is never refused
    /// forever.
    pub fn take(&mut self, n: u64, now: Timestamp) -> Result<(), Duration> {
        self.refill(now);
        let want = i128::from(n) * i128::from(self.period_ms);
        if want <= self.level || self.level >= self.full() {
            self.level = self.level.saturating_sub(want);
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
        self.level = self.level.saturating_add(delta).min(self.full());
    }

    /// Units available now (rounded down).
    pub fn available(&self, now: Timestamp) -> i64 {
        let mut b = *self;
        b.refill(now);
        i64::try_from(b.level.div_euclid(i128::from(b.period_ms))).unwrap_or(if b.level < 0 {
            i64::MIN
        } else {
            i64::MAX
        })
    }

    /// True when the bucket is full now: forgetting it changes nothing, since a bucket that is
    /// not there starts full ([`Bucket::resume`]).
    pub fn is_full(&self, now: Timestamp) -> bool {
        let mut b = *self;
        b.refill(now);
        b.level >= b.full()
    }
}

/// Takes from several buckets at once, all or none: each `(bucket, n)` gives `n` units, or
/// nothing changes and the answer is the index of the first bucket that could not, with its
/// retry-after. The buckets must be distinct.
pub fn take_all(buckets: &mut [(Bucket, u64)], now: Timestamp) -> Result<(), (usize, Duration)> {
    let mut after = Vec::with_capacity(buckets.len());
    for (i, (bucket, n)) in buckets.iter().enumerate() {
        let mut b = *bucket;
        b.take(*n, now).map_err(|retry_after| (i, retry_after))?;
        after.push(b);
    }
    for ((bucket, _), b) in buckets.iter_mut().zip(after) {
        *bucket = b;
    }
    Ok(())
}

/// Capacity and period in the bucket's units: capacity saturated to i64, period in whole
/// milliseconds, at least one.
fn config(capacity: u64, period: Duration) -> (i64, i64) {
    (
        i64::try_from(capacity).unwrap_or(i64::MAX),
        i64::try_from(period.as_millis()).unwrap_or(i64::MAX).max(1),
    )
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

    #[test]
    fn frequent_refills_lose_nothing_to_rounding() {
        // 60 per minute: one unit per 1000 ms. Refills every 1.9 ms count 1 ms each time; the
        // remainders must add up rather than be dropped.
        let mut b = Bucket::new(60, Duration::from_secs(60), t(0));
        b.take(60, t(0)).unwrap();
        let mut now = chrono::DateTime::from_timestamp_millis(1_800_000_000_000).unwrap();
        for _ in 0..1000 {
            now += chrono::Duration::microseconds(1900);
            b.settle(0, 0, now);
        }
        // 1900 ms have passed: one unit is back, a second is not.
        assert_eq!(b.available(now), 1);
        assert_eq!(b.available(now + chrono::Duration::milliseconds(100)), 2);
    }

    #[test]
    fn a_state_restores_the_same_bucket() {
        let mut b = Bucket::new(1000, Duration::from_secs(60), t(0));
        b.take(700, t(0)).unwrap();
        b.settle(0, 900, t(5));
        let restored = Bucket::restore(b.state()).unwrap();
        assert_eq!(restored, b);
        assert_eq!(restored.available(t(30_000)), b.available(t(30_000)));
        let over = BucketState {
            level: 1000 * 60_000 + 1,
            ..b.state()
        };
        assert_eq!(Bucket::restore(over), None);
        let no_period = BucketState {
            period_ms: 0,
            ..b.state()
        };
        assert_eq!(Bucket::restore(no_period), None);
    }

    #[test]
    fn a_new_capacity_keeps_the_fraction_that_was_left() {
        let minute = Duration::from_secs(60);
        let mut b = Bucket::new(100, minute, t(0));
        b.take(75, t(0)).unwrap();
        assert_eq!(b.reconfigured(100, minute, t(0)), b);
        // A quarter left: a quarter of the new capacity.
        assert_eq!(b.reconfigured(1000, minute, t(0)).available(t(0)), 250);
        assert_eq!(b.reconfigured(10, minute, t(0)).available(t(0)), 2);
        // A debt stays a debt, scaled alike.
        b.settle(0, 75, t(0));
        assert_eq!(b.available(t(0)), -50);
        assert_eq!(b.reconfigured(10, minute, t(0)).available(t(0)), -5);
        // Refill under the old configuration counts up to the change.
        let full = Bucket::resume(Some(b), 100, minute, t(90_000));
        assert!(full.is_full(t(90_000)));
        assert!(Bucket::resume(None, 7, minute, t(0)).is_full(t(0)));
    }

    #[test]
    fn several_buckets_give_all_or_nothing() {
        let minute = Duration::from_secs(60);
        let a = Bucket::new(10, minute, t(0));
        let mut b = Bucket::new(100, minute, t(0));
        b.take(1, t(0)).unwrap();
        let mut both = [(a, 5), (b, 100)];
        // One unit short, refilled in 600 ms; the first bucket gave nothing either.
        assert_eq!(
            take_all(&mut both, t(0)),
            Err((1, Duration::from_millis(600)))
        );
        assert_eq!(both, [(a, 5), (b, 100)]);
        let mut both = [(a, 5), (b, 99)];
        assert!(take_all(&mut both, t(0)).is_ok());
        assert_eq!(both[0].0.available(t(0)), 5);
        assert_eq!(both[1].0.available(t(0)), 0);
    }

    #[test]
    fn only_a_full_bucket_may_be_forgotten() {
        let mut b = Bucket::new(60, Duration::from_secs(60), t(0));
        assert!(b.is_full(t(0)));
        b.take(2, t(0)).unwrap();
        assert!(!b.is_full(t(1999)));
        assert!(b.is_full(t(2000)));
    }

    proptest! {
        /// Refilling in many steps or in one gives the same bucket (below full).
        #[test]
        fn refill_does_not_depend_on_how_often_it_is_counted(steps in proptest::collection::vec(1_i64..5000, 1..50)) {
            let mut stepped = Bucket::new(1_000_000, Duration::from_secs(3600), t(0));
            stepped.take(1_000_000, t(0)).unwrap();
            let mut once = stepped;
            let mut now = 0;
            for dt in steps {
                now += dt;
                stepped.settle(0, 0, t(now));
            }
            once.settle(0, 0, t(now));
            prop_assert_eq!(stepped.available(t(now)), once.available(t(now)));
            prop_assert_eq!(stepped.state().level, once.state().level);
        }

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
