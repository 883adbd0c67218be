//! What a run reports: counts, latency percentiles, utilisation, scaling and the estimated cost
//! of the capacity it held, plus the time series the plot draws.

use flotilla_core::balance::StrategyKind;
use serde::{Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Microseconds in an hour.
const US_PER_HOUR: u128 = 3_600_000_000;

/// An amount of US dollars, exact to the micro-dollar (money is never a float).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Usd(u64);

impl Usd {
    #[cfg(test)]
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// The cost of `instance_us` instance-microseconds at this price per instance-hour, rounded
    /// to the nearest micro-dollar.
    pub fn for_instance_time(self, instance_us: u128) -> Usd {
        let micros = (instance_us * u128::from(self.0) + US_PER_HOUR / 2) / US_PER_HOUR;
        Usd(u64::try_from(micros).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Usd {
    /// Four decimals: these are estimates of small amounts, where cents hide the differences.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hundredths_of_cents = (self.0 + 50) / 100;
        write!(
            f,
            "{}.{:04}",
            hundredths_of_cents / 10_000,
            hundredths_of_cents % 10_000
        )
    }
}

impl FromStr for Usd {
    type Err = String;
    /// A plain decimal such as `0.50` or `2`, at most six decimals.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not an amount such as 0.50");
        let (whole, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
        if whole.is_empty() && frac.is_empty()
            || frac.len() > 6
            || !whole
                .chars()
                .chain(frac.chars())
                .all(|c| c.is_ascii_digit())
        {
            return Err(bad());
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let frac_micros: u64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
        whole
            .checked_mul(1_000_000)
            .and_then(|w| w.checked_add(frac_micros))
            .map(Usd)
            .ok_or_else(bad)
    }
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One autoscaling decision, as the core gave it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScaleEvent {
    /// Simulated seconds since the start.
    pub at_s: f64,
    pub from: u32,
    pub to: u32,
    /// The core's reason, e.g. `utilisation 0.91 > 0.80 for 30s, queue 42`.
    pub reason: String,
}

/// Latency of completed tasks, from arrival to the end of the successful attempt (queue waits,
/// failed attempts and retry backoff included), in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

/// Values per time bucket, for the plot.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Series {
    /// Width of a bucket in simulated seconds.
    pub bucket_s: f64,
    /// p95 latency of the tasks completed in each bucket (`null` when none completed).
    pub p95_ms: Vec<Option<f64>>,
    /// Most instances held (starting, serving or draining) during each bucket.
    pub instances: Vec<u32>,
}

/// The result of one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Always true: these figures come from a model, not from a measurement.
    pub simulated: bool,
    pub strategy: StrategyKind,
    pub arrived: u64,
    pub completed: u64,
    /// Tasks whose attempts ran out.
    pub failed: u64,
    /// Tasks still waiting when nothing could serve them any more (always 0 unless a bug).
    pub stranded: u64,
    pub attempts: u64,
    pub retries: u64,
    pub latency: Latency,
    /// Busy slots over serving slots, integrated over the run.
    pub mean_utilisation: f64,
    /// The largest utilisation the autoscaler's samples saw.
    pub peak_sampled_utilisation: f64,
    pub scale_events: Vec<ScaleEvent>,
    /// Outlier ejections (with the core's reasons, counted).
    pub ejections: u64,
    pub peak_instances: u32,
    /// Instance time held, from the start of provisioning to removal.
    pub instance_hours: f64,
    /// Instance-hours × the price: a simulated estimate.
    pub capacity_cost_usd: Usd,
    /// Length of the run in simulated seconds.
    pub simulated_s: f64,
    pub series: Series,
}

/// The nearest-rank percentile `p` (0 to 1) of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summary of latencies in microseconds, sorted in place.
pub fn latency_summary(values: &mut [u64]) -> Latency {
    values.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let sum: u128 = values.iter().map(|&v| u128::from(v)).sum();
    Latency {
        p50_ms: ms(percentile(values, 0.50)),
        p95_ms: ms(percentile(values, 0.95)),
        p99_ms: ms(percentile(values, 0.99)),
        mean_ms: if values.is_empty() {
            0.0
        } else {
            sum as f64 / values.len() as f64 / 1000.0
        },
        max_ms: ms(values.last().copied().unwrap_or(0)),
    }
}
