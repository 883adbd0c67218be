//! The judgement of `flotilla doctor`: facts gathered from a running deployment in, a sectioned
//! report out — one finding per check with a severity, what was measured and what to do about
//! it, and an overall status.
//!
//! Pure like the rest of this crate: the shell (`flotilla doctor`) does every request and reads
//! the clock; this module only compares what it was given with the thresholds below. A fact the
//! shell could not measure arrives as [`Gathered::Unavailable`] with the reason, and the check
//! says so — no finding is ever made up from a default.

mod checks;
mod metrics_text;

pub use metrics_text::{MetricsSummary, summarise_metrics};

use crate::Timestamp;
use crate::agent::AgentInstance;
use crate::auth::KeyView;
use crate::wire::{ActiveAlert, PoolView, SecretInfo, SystemInfo};
use serde::{Deserialize, Serialize};

/// Ops target: p95 task latency below this (seconds).
pub const P95_TARGET_S: f64 = 5.0;
/// p95 task latency at or above this is unhealthy (the default alert rule's threshold).
pub const P95_UNHEALTHY_S: f64 = 30.0;
/// Ops target: share of failed agent calls below this.
pub const ERROR_RATE_TARGET: f64 = 0.01;
/// An error rate at or above this is unhealthy (the default success-rate alert fires at 0.9).
pub const ERROR_RATE_UNHEALTHY: f64 = 0.10;
/// Ops target: CPU use of the control plane below this share of its CPUs.
pub const CPU_TARGET: f64 = 0.80;
/// Ops target: resident memory below this share of the memory limit.
pub const MEMORY_TARGET: f64 = 0.85;
/// Resident memory at or above this share of the limit is unhealthy.
pub const MEMORY_UNHEALTHY: f64 = 0.95;
/// Free space of the data directory's file system below this share warns (the default of
/// `--min-disk-free`); below half of it is unhealthy.
pub const DISK_FREE_WARNING: f64 = 0.10;
/// Open file descriptors at or above this share of the limit warn.
pub const FDS_WARNING: f64 = 0.80;
/// A pool whose load reaches this share of its capacity warns.
pub const LOAD_WARNING: f64 = 0.80;
/// Secrets not rotated for this many days warn.
pub const SECRET_WARNING_DAYS: i64 = 90;
/// Secrets not rotated for this many days are unhealthy.
pub const SECRET_UNHEALTHY_DAYS: i64 = 180;
/// This many authentication failures within [`AUTH_FAILURE_WINDOW_HOURS`] warn.
pub const AUTH_FAILURES_WARNING: u64 = 10;
/// The window of the authentication-failure check.
pub const AUTH_FAILURE_WINDOW_HOURS: i64 = 24;
/// Budget utilisation at or above this share warns (at 1.0 it is unhealthy).
pub const BUDGET_WARNING: f64 = 0.80;
/// The name the bootstrap admin key is created with.
pub const BOOTSTRAP_KEY_NAME: &str = "bootstrap admin";

/// A fact that was measured, or why it could not be.
#[derive(Clone, Debug, PartialEq)]
pub enum Gathered<T> {
    Measured(T),
    /// Not measured; the text says why (e.g. "needs an admin key", "the server is unreachable").
    Unavailable(String),
}

impl<T> Gathered<T> {
    /// The value, if measured.
    pub fn measured(&self) -> Option<&T> {
        match self {
            Gathered::Measured(v) => Some(v),
            Gathered::Unavailable(_) => None,
        }
    }
}

/// The answer of a probe (`/health`, `/ready`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    Ok,
    /// The server answered, but not with success; the text is its reason.
    Failed(String),
    /// No answer at all (connection refused, timeout, TLS failure).
    Unreachable(String),
}

/// What became of the API key.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyCheck {
    /// No key was given.
    Missing,
    /// The server refused it (401); the text is the server's message.
    Rejected(String),
    /// The server accepted it: `GET /v1/system` answered (role and tenant in `system`).
    Accepted,
    /// The key could not be tested (e.g. the server is down); the text says why.
    Untested(String),
}

/// CPU time of the control plane over a short window: two `GET /v1/system` samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuWindow {
    /// `process.cpu_seconds` of the first and the second sample.
    pub first_cpu_seconds: f64,
    pub second_cpu_seconds: f64,
    /// Wall-clock seconds between the samples.
    pub elapsed_s: f64,
}

/// What a Prometheus server said about Flotilla (5-minute rates, so recent behaviour).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrometheusFacts {
    /// Scrape targets whose `up` is 1, and 0.
    pub targets_up: u32,
    pub targets_down: u32,
    /// Series of `ai_agent_queue_length` it holds (0: it does not scrape Flotilla).
    pub queue_series: u32,
    /// `histogram_quantile(0.95, …ai_task_duration_seconds_bucket[5m])`; `None`: no tasks ended.
    pub task_p95_s: Option<f64>,
    /// Failed over all `/execute` calls in the last 5 minutes; `None`: no calls.
    pub error_rate: Option<f64>,
}

/// A model provider as the model gateway sees it (filled once the gateway exists).
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderFact {
    pub name: String,
    pub reachable: bool,
    /// What the gateway last saw (an error, a latency).
    pub detail: String,
}

/// One budget's state (filled once budgets exist).
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetFact {
    /// Whose budget, e.g. a tenant's name and the period.
    pub name: String,
    /// Spent over the limit so far in this period.
    pub utilisation: f64,
    /// Spending at the current rate until the period ends, over the limit; `None`: no basis.
    pub projected: Option<f64>,
}

/// Authentication failures found in the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthFailures {
    /// Failures within the last [`AUTH_FAILURE_WINDOW_HOURS`].
    pub recent: u64,
    /// True when the shell stopped reading before the window's start (the count is a minimum).
    pub capped: bool,
}

/// Everything the shell gathered. `now` is the shell's clock at the time of gathering.
#[derive(Clone, Debug, PartialEq)]
pub struct Facts {
    pub now: Timestamp,
    /// The base URL the doctor was pointed at (no credentials).
    pub url: String,
    pub health: ProbeResult,
    pub ready: ProbeResult,
    pub key: KeyCheck,
    pub system: Gathered<SystemInfo>,
    pub cpu: Gathered<CpuWindow>,
    /// From the control plane's own `/metrics` (counters since it started).
    pub metrics: Gathered<MetricsSummary>,
    /// Whether `/metrics` answered 200 to a request without a key.
    pub metrics_open: Gathered<bool>,
    /// `None`: no `--prometheus` was given.
    pub prometheus: Option<Gathered<PrometheusFacts>>,
    pub pools: Gathered<Vec<PoolView>>,
    pub agents: Gathered<Vec<AgentInstance>>,
    pub alerts: Gathered<Vec<ActiveAlert>>,
    pub keys: Gathered<Vec<KeyView>>,
    pub secrets: Gathered<Vec<SecretInfo>>,
    pub auth_failures: Gathered<AuthFailures>,
    /// `--kube`: report the kubernetes pools' pods.
    pub kube: bool,
    /// Free share of the data directory's volume below which the disk is a warning (half of it:
    /// failing); [`DISK_FREE_WARNING`] unless `--min-disk-free` says otherwise.
    pub min_disk_free: f64,
    pub providers: Gathered<Vec<ProviderFact>>,
    pub budgets: Gathered<Vec<BudgetFact>>,
}

/// How bad one finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Ok,
    /// Could not be measured, or does not apply; does not change the overall status.
    Unknown,
    Warning,
    /// Something is broken: work is not done, or a target is badly missed.
    Error,
    /// Nothing else can be trusted: the server is down, not ready, or refuses the key.
    Critical,
}

impl Severity {
    /// The mark printed before the finding.
    pub const fn symbol(self) -> &'static str {
        match self {
            Severity::Ok => "✔",
            Severity::Unknown => "–",
            Severity::Warning => "⚠",
            Severity::Error | Severity::Critical => "✘",
        }
    }
}

/// The overall verdict.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, strum::IntoStaticStr,
)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Status {
    Healthy,
    Warning,
    Unhealthy,
    Critical,
}

impl Status {
    /// The snake_case name, as in the JSON report.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The process exit code: 0 healthy, 1 warning, 2 unhealthy or critical.
    pub const fn exit_code(self) -> u8 {
        match self {
            Status::Healthy => 0,
            Status::Warning => 1,
            Status::Unhealthy | Status::Critical => 2,
        }
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Short name, e.g. `API health` or `pool code_generator`.
    pub name: String,
    pub severity: Severity,
    /// What was measured.
    pub summary: String,
    /// What to do about it; absent when nothing needs doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<String>,
}

/// A titled group of findings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub name: String,
    pub checks: Vec<Check>,
}

/// The whole diagnosis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub url: String,
    pub at: Timestamp,
    pub status: Status,
    pub exit_code: u8,
    pub sections: Vec<Section>,
}

impl Report {
    /// Every finding that carries a recommendation, worst first.
    pub fn recommendations(&self) -> Vec<&Check> {
        let mut found: Vec<&Check> = self
            .sections
            .iter()
            .flat_map(|s| &s.checks)
            .filter(|c| c.recommendation.is_some() && c.severity >= Severity::Warning)
            .collect();
        found.sort_by_key(|c| std::cmp::Reverse(c.severity));
        found
    }
}

/// Judges the facts.
pub fn diagnose(facts: &Facts) -> Report {
    let sections = vec![
        Section {
            name: "Connectivity".to_owned(),
            checks: checks::connectivity(facts),
        },
        Section {
            name: "Performance".to_owned(),
            checks: checks::performance(facts),
        },
        Section {
            name: "Resources".to_owned(),
            checks: checks::resources(facts),
        },
        Section {
            name: "Security".to_owned(),
            checks: checks::security(facts),
        },
        Section {
            name: "Costs".to_owned(),
            checks: checks::costs(facts),
        },
    ];
    let worst = sections
        .iter()
        .flat_map(|s| &s.checks)
        .map(|c| c.severity)
        .max()
        .unwrap_or(Severity::Ok);
    let status = match worst {
        Severity::Ok | Severity::Unknown => Status::Healthy,
        Severity::Warning => Status::Warning,
        Severity::Error => Status::Unhealthy,
        Severity::Critical => Status::Critical,
    };
    Report {
        url: facts.url.clone(),
        at: facts.now,
        status,
        exit_code: status.exit_code(),
        sections,
    }
}

#[cfg(test)]
mod tests;
