//! The arrival process: Poisson arrivals whose rate follows a profile over the run.
//!
//! A non-homogeneous Poisson process drawn by thinning (Lewis and Shedler): candidate arrivals
//! come at the profile's peak rate and each is kept with probability rate(t) / peak. The stream
//! has its own random generator, so every strategy of a comparison sees the same arrivals.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Length of one burst cycle, in seconds.
const BURST_PERIOD_S: f64 = 60.0;
/// Part of each cycle spent in a burst, in seconds (the last 6 s of each minute).
const BURST_LENGTH_S: f64 = 6.0;
/// Rate during a burst, relative to the base rate.
const BURST_FACTOR: f64 = 5.0;
/// The ramp's rate at the start and at the end of the run, relative to the base rate.
const RAMP_FROM: f64 = 0.2;
const RAMP_TO: f64 = 1.5;

/// `--profile`: the shape of the arrival rate over time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// A constant rate.
    #[default]
    Steady,
    /// From 0.2× to 1.5× the rate, linearly over the run's expected length.
    Ramp,
    /// The rate, with 6 s bursts at 5× once a minute.
    Burst,
}

impl Profile {
    /// Mean rate over a run, relative to the base rate.
    fn mean_factor(self) -> f64 {
        match self {
            Profile::Steady => 1.0,
            Profile::Ramp => (RAMP_FROM + RAMP_TO) / 2.0,
            Profile::Burst => {
                let share = BURST_LENGTH_S / BURST_PERIOD_S;
                (1.0 - share) + share * BURST_FACTOR
            }
        }
    }

    /// The largest rate, relative to the base rate.
    fn peak_factor(self) -> f64 {
        match self {
            Profile::Steady => 1.0,
            Profile::Ramp => RAMP_TO,
            Profile::Burst => BURST_FACTOR,
        }
    }

    /// Expected length in seconds of a run of `tasks` arrivals at base `rate`.
    pub fn expected_duration_s(self, rate: f64, tasks: u64) -> f64 {
        tasks as f64 / (rate * self.mean_factor())
    }
}

/// The arrivals of one run, drawn lazily.
#[derive(Debug)]
pub struct Arrivals {
    rng: SmallRng,
    profile: Profile,
    rate: f64,
    /// The ramp's length: the expected length of the run.
    horizon_s: f64,
    t_s: f64,
    left: u64,
}

impl Arrivals {
    pub fn new(profile: Profile, rate: f64, tasks: u64, seed: u64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            profile,
            rate,
            horizon_s: profile.expected_duration_s(rate, tasks),
            t_s: 0.0,
            left: tasks,
        }
    }

    /// Arrivals still to come.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// The rate at `t_s` seconds, in tasks per second.
    fn rate_at(&self, t_s: f64) -> f64 {
        let factor = match self.profile {
            Profile::Steady => 1.0,
            Profile::Ramp => {
                let x = (t_s / self.horizon_s.max(1e-9)).min(1.0);
                RAMP_FROM + (RAMP_TO - RAMP_FROM) * x
            }
            Profile::Burst => {
                if t_s % BURST_PERIOD_S >= BURST_PERIOD_S - BURST_LENGTH_S {
                    BURST_FACTOR
                } else {
                    1.0
                }
            }
        };
        self.rate * factor
    }

    /// The time of the next arrival in microseconds, or `None` after the last.
    pub fn next_us(&mut self) -> Option<u64> {
        if self.left == 0 {
            return None;
        }
        let peak = self.rate * self.profile.peak_factor();
        loop {
            let u: f64 = 1.0 - self.rng.random::<f64>();
            self.t_s += -u.ln() / peak;
            let keep: f64 = self.rng.random();
            if keep * peak < self.rate_at(self.t_s) {
                break;
            }
        }
        self.left -= 1;
        Some((self.t_s * 1e6).round() as u64)
    }
}
