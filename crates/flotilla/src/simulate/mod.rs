//! `flotilla simulate`: a discrete-event simulation of one agent pool, at a scale this machine
//! cannot host, driven by the control plane's own decisions.
//!
//! Every decision taken here is a call into `flotilla-core`, the same pure functions the control
//! plane's shell calls: [`flotilla_core::balance::pick`] places each attempt,
//! [`flotilla_core::stats::InstanceStats`] keeps each instance's peak-EWMA latency and success
//! window, [`flotilla_core::autoscale::decide`] and [`choose_victims`](flotilla_core::autoscale::choose_victims)
//! size the pool, [`flotilla_core::health`] ejects outliers and
//! [`flotilla_core::retry::after_failure`] decides retries and their backoff. The policies are
//! the defaults of a pool in the control plane's configuration (`Pool::implicit`). What is
//! simulated is only the world around them: arrivals, service times, failures and the time an
//! instance takes to start.
//!
//! This module must not read the clock or use unseeded randomness: time is a simulated offset
//! from a fixed epoch and every random draw comes from a stream derived from [`Config::seed`], so
//! a configuration and a seed always produce the same [`Report`]. (The command measures the wall
//! time of a run around it, only to report it.)

mod arrivals;
mod engine;
mod fleet;
mod plot;
mod report;

#[cfg(test)]
mod tests;

pub use arrivals::Profile;
pub use engine::simulate;
pub use plot::write_svg;
pub use report::{Report, Usd};

use serde::Serialize;
use std::time::Duration;

/// Everything a run depends on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    /// Seeds every random stream (arrivals, the fleet, each instance's service times, the
    /// balancer's choices and retry jitter).
    pub seed: u64,
    /// Tasks that arrive over the run.
    pub tasks: u64,
    /// Instances at the start (clamped to the autoscaling bounds when autoscaling).
    pub instances: u32,
    /// Tasks one instance runs at once.
    pub capacity: u32,
    /// Nominal median service time of an attempt, in milliseconds.
    pub median_ms: f64,
    /// Log-normal σ of one attempt's service time around its instance's median.
    pub sigma: f64,
    /// Share of instances that are slow.
    pub slow_share: f64,
    /// How many times slower a slow instance's median is.
    pub slow_factor: f64,
    /// Failure probability of an attempt on an ordinary instance.
    pub failure_rate: f64,
    /// Share of instances that fail much more often.
    pub bad_share: f64,
    /// Failure probability of an attempt on a bad instance.
    pub bad_failure_rate: f64,
    /// Attempts per task, the first included.
    pub max_attempts: u32,
    /// Shape of the arrival rate over the run.
    pub profile: Profile,
    /// Base arrival rate in tasks per second.
    pub rate: f64,
    /// `None`: the pool keeps its size.
    pub autoscale: Option<Autoscaling>,
    /// Passive outlier ejection with the control plane's default policy.
    pub ejection: bool,
    /// Price of one instance for one hour, for the capacity cost estimate.
    pub price_per_hour: Usd,
}

/// Autoscaling settings of a run; the thresholds, delays and cooldown are the control plane's
/// defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Autoscaling {
    pub min: u32,
    pub max: u32,
    /// Between a scale-up decision and the new instance taking work.
    #[serde(with = "seconds")]
    pub startup: Duration,
    /// Between two samples of the pool.
    #[serde(with = "seconds")]
    pub interval: Duration,
}

impl Config {
    /// The command line's defaults, for tests.
    #[cfg(test)]
    pub fn new(seed: u64) -> Self {
        let mut config = Self {
            seed,
            tasks: 100_000,
            instances: 20,
            capacity: 4,
            median_ms: 200.0,
            sigma: 0.5,
            slow_share: 0.2,
            slow_factor: 3.0,
            failure_rate: 0.01,
            bad_share: 0.05,
            bad_failure_rate: 0.5,
            max_attempts: 3,
            profile: Profile::Steady,
            rate: 0.0,
            autoscale: None,
            ejection: true,
            price_per_hour: Usd::from_micros(500_000),
        };
        config.rate = 0.7 * config.nominal_throughput();
        config
    }

    /// Tasks per second the starting fleet completes when every slot is busy, by expectation:
    /// capacity over the mean service time (a log-normal's mean is its median × e^(σ²/2)), with
    /// slow instances counted at their speed. `--load` is a share of this.
    pub fn nominal_throughput(&self) -> f64 {
        let mean_s = self.median_ms / 1000.0 * (self.sigma * self.sigma / 2.0).exp();
        let speed = 1.0 - self.slow_share + self.slow_share / self.slow_factor.max(1e-9);
        f64::from(self.instances) * f64::from(self.capacity) / mean_s.max(1e-9) * speed
    }

    /// Rejects settings the engine cannot run.
    pub fn validate(&self) -> anyhow::Result<()> {
        let share = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(anyhow::anyhow!("--{name} must be between 0 and 1"))
            }
        };
        share("slow-share", self.slow_share)?;
        share("failure-rate", self.failure_rate)?;
        share("bad-share", self.bad_share)?;
        share("bad-failure-rate", self.bad_failure_rate)?;
        anyhow::ensure!(
            self.tasks >= 1 && self.tasks <= u64::from(u32::MAX),
            "--tasks must be between 1 and {}",
            u32::MAX
        );
        anyhow::ensure!(
            (1..=100_000).contains(&self.instances),
            "--instances must be between 1 and 100000"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.capacity),
            "--capacity must be between 1 and 10000"
        );
        anyhow::ensure!(
            self.median_ms.is_finite() && self.median_ms > 0.0,
            "--median-ms must be > 0"
        );
        anyhow::ensure!(
            self.sigma.is_finite() && (0.0..=3.0).contains(&self.sigma),
            "--sigma must be between 0 and 3"
        );
        anyhow::ensure!(
            self.slow_factor.is_finite() && self.slow_factor >= 1.0,
            "--slow-factor must be ≥ 1"
        );
        anyhow::ensure!(
            (1..=100).contains(&self.max_attempts),
            "--max-attempts must be between 1 and 100"
        );
        anyhow::ensure!(
            self.rate.is_finite() && self.rate > 0.0,
            "the arrival rate must be > 0"
        );
        if let Some(a) = &self.autoscale {
            anyhow::ensure!(
                a.min >= 1 && a.min <= a.max && a.max <= 100_000,
                "autoscaling needs 1 ≤ --min ≤ --max ≤ 100000"
            );
            anyhow::ensure!(!a.interval.is_zero(), "--sample-s must be greater than 0");
        }
        Ok(())
    }

    /// Instances the run starts with.
    pub fn initial_instances(&self) -> u32 {
        match &self.autoscale {
            Some(a) => self.instances.clamp(a.min, a.max),
            None => self.instances,
        }
    }
}

mod seconds {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}
