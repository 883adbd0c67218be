//! The simulated instances: how fast each one is and how often it fails.
//!
//! Each instance's attempts take a log-normal time around the instance's own median; medians
//! vary a little between ordinary instances (σ = 0.15) and a share of instances is several times
//! slower. A share of instances is "bad" and fails far more often. The starting fleet has exactly
//! the configured shares (placed at random); instances added later by the autoscaler keep the
//! shares by error diffusion (the n-th instance is slow when the running count falls short of
//! `share × n`), so a run's mix never drifts with luck.

use super::Config;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How much ordinary instances' medians differ from one another (log-normal σ).
const MEDIAN_SPREAD: f64 = 0.15;
/// Weighted round robin weight of an instance as fast as the nominal median.
const NOMINAL_WEIGHT: f64 = 100.0;

/// What makes one instance behave as it does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InstanceProfile {
    /// Median service time of its attempts, in milliseconds.
    pub median_ms: f64,
    /// Probability that an attempt fails.
    pub failure_rate: f64,
    /// Its weight under weighted round robin: proportional to its speed (1 / median), as an
    /// operator who had measured every instance would configure it — the best case for that
    /// strategy, since the control plane has no such oracle.
    pub weight: u32,
}

impl InstanceProfile {
    /// One attempt's service time in microseconds: log-normal around the median.
    pub fn service_us(&self, sigma: f64, rng: &mut SmallRng) -> u64 {
        let z = standard_normal(rng);
        let ms = self.median_ms * (sigma * z).exp();
        (ms * 1000.0).round().max(1.0) as u64
    }
}

/// Draws instance profiles: first the starting fleet, then one at a time.
#[derive(Debug)]
pub struct FleetModel {
    rng: SmallRng,
    median_ms: f64,
    slow_share: f64,
    slow_factor: f64,
    failure_rate: f64,
    bad_share: f64,
    bad_failure_rate: f64,
    made: u64,
    slow_made: u64,
    bad_made: u64,
}

impl FleetModel {
    pub fn new(config: &Config, seed: u64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            median_ms: config.median_ms,
            slow_share: config.slow_share,
            slow_factor: config.slow_factor,
            failure_rate: config.failure_rate,
            bad_share: config.bad_share,
            bad_failure_rate: config.bad_failure_rate,
            made: 0,
            slow_made: 0,
            bad_made: 0,
        }
    }

    /// The starting fleet of `n`: exactly `round(share × n)` slow and bad instances, at random
    /// places (a slow instance may also be bad).
    pub fn initial(&mut self, n: u32) -> Vec<InstanceProfile> {
        let n_usize = n as usize;
        let count = |share: f64| ((share * f64::from(n)).round() as usize).min(n_usize);
        let mut slow = vec![false; n_usize];
        for i in rand::seq::index::sample(&mut self.rng, n_usize, count(self.slow_share)) {
            slow[i] = true;
        }
        let mut bad = vec![false; n_usize];
        for i in rand::seq::index::sample(&mut self.rng, n_usize, count(self.bad_share)) {
            bad[i] = true;
        }
        (0..n_usize).map(|i| self.make(slow[i], bad[i])).collect()
    }

    /// One more instance (a scale-up).
    pub fn next(&mut self) -> InstanceProfile {
        let due = |share: f64, made: u64, so_far: u64| {
            ((share * (made + 1) as f64).round() as u64) > so_far
        };
        let slow = due(self.slow_share, self.made, self.slow_made);
        let bad = due(self.bad_share, self.made, self.bad_made);
        self.make(slow, bad)
    }

    fn make(&mut self, slow: bool, bad: bool) -> InstanceProfile {
        self.made += 1;
        self.slow_made += u64::from(slow);
        self.bad_made += u64::from(bad);
        let jitter = (MEDIAN_SPREAD * standard_normal(&mut self.rng)).exp();
        let median_ms = self.median_ms * jitter * if slow { self.slow_factor } else { 1.0 };
        InstanceProfile {
            median_ms,
            failure_rate: if bad {
                self.bad_failure_rate
            } else {
                self.failure_rate
            },
            weight: (NOMINAL_WEIGHT * self.median_ms / median_ms)
                .round()
                .max(1.0) as u32,
        }
    }
}

/// A standard normal draw (Box–Muller; the second value is dropped to keep streams simple).
pub fn standard_normal(rng: &mut SmallRng) -> f64 {
    // 1 - u lies in (0, 1], so its logarithm is finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
