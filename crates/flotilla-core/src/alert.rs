//! Alert rules and their state machine (DESIGN.md §11): inactive → pending → firing → resolved.
//!
//! A rule compares one built-in signal with a threshold; a breach must hold for the rule's `for`
//! duration before the alert fires. Each (rule, agent type) pair has its own state. `step` is a
//! pure function of the previous state, the signal's value and the time.

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// What a rule watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Share of successful attempts, per agent type (0 to 1).
    SuccessRate,
    /// Share of failed attempts, per agent type (0 to 1).
    ErrorRate,
    /// 95th percentile of `/execute` durations over the last 5 minutes, in seconds, per type.
    P95ResponseTime,
    /// Tasks waiting, per agent type.
    QueueLength,
    /// Model tokens agents reported over the last hour, all types together.
    HourlyTokens,
    /// Instances taking work, per agent type.
    HealthyInstances,
}

impl Signal {
    /// True when the signal has one value per agent type (else one for the whole system).
    pub const fn per_agent_type(self) -> bool {
        !matches!(self, Signal::HourlyTokens)
    }

    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Signal::SuccessRate => "success_rate",
            Signal::ErrorRate => "error_rate",
            Signal::P95ResponseTime => "p95_response_time",
            Signal::QueueLength => "queue_length",
            Signal::HourlyTokens => "hourly_tokens",
            Signal::HealthyInstances => "healthy_instances",
        }
    }
}

/// How the value is compared with the threshold; a true comparison is a breach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    #[serde(rename = "<")]
    Below,
    #[serde(rename = "<=")]
    AtMost,
    #[serde(rename = ">")]
    Above,
    #[serde(rename = ">=")]
    AtLeast,
}

impl Comparison {
    /// True when `value` breaches `threshold`.
    pub fn breached(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Below => value < threshold,
            Comparison::AtMost => value <= threshold,
            Comparison::Above => value > threshold,
            Comparison::AtLeast => value >= threshold,
        }
    }

    /// The operator as written.
    pub const fn as_str(self) -> &'static str {
        match self {
            Comparison::Below => "<",
            Comparison::AtMost => "<=",
            Comparison::Above => ">",
            Comparison::AtLeast => ">=",
        }
    }
}

/// How urgent an alert is.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What firing does (and resolving undoes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Send to every configured notifier.
    Notify,
    /// Ask for one more instance in the affected pool.
    ScaleUp,
    /// Shed new low-priority work (priority below 5) with 503 until the alert resolves.
    EmergencyMode,
    /// Tighten the rate limit of the tenant that used the most model tokens in the last hour
    /// (to `alerting.rate_limit`) until the alert resolves. Rules on `hourly_tokens` only.
    RateLimit,
}

/// A validated rule.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRule {
    pub name: String,
    pub signal: Signal,
    /// Only this agent type; `None`: every type (each with its own state).
    pub agent_type: Option<String>,
    pub comparison: Comparison,
    pub threshold: f64,
    /// How long a breach must hold before the alert fires.
    pub for_: Duration,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub actions: Vec<Action>,
}

/// The classic defaults (DESIGN.md §11).
pub fn default_rules() -> Vec<AlertRule> {
    let rule =
        |name: &str, signal, comparison, threshold, secs, severity, actions: &[Action]| AlertRule {
            name: name.to_owned(),
            signal,
            agent_type: None,
            comparison,
            threshold,
            for_: Duration::from_secs(secs),
            severity,
            labels: BTreeMap::new(),
            actions: actions.to_vec(),
        };
    vec![
        rule(
            "success_rate_low",
            Signal::SuccessRate,
            Comparison::Below,
            0.9,
            300,
            Severity::Warning,
            &[Action::Notify, Action::ScaleUp],
        ),
        rule(
            "success_rate_critical",
            Signal::SuccessRate,
            Comparison::Below,
            0.8,
            180,
            Severity::Critical,
            &[Action::Notify, Action::EmergencyMode],
        ),
        rule(
            "response_time_high",
            Signal::P95ResponseTime,
            Comparison::Above,
            30.0,
            600,
            Severity::Warning,
            &[Action::Notify],
        ),
        rule(
            "hourly_tokens_high",
            Signal::HourlyTokens,
            Comparison::Above,
            1_000_000.0,
            60,
            Severity::Critical,
            &[Action::Notify, Action::RateLimit],
        ),
    ]
}

/// Where one (rule, agent type) alert stands.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum AlertState {
    #[default]
    Inactive,
    /// Breached since then; fires once the breach has held for the rule's duration.
    Pending { since: Timestamp },
    /// Firing since `since` (breached since `breached_since`).
    Firing {
        since: Timestamp,
        breached_since: Timestamp,
    },
}

/// A change of state worth telling someone about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// A breach began.
    Pending,
    /// The breach ended before the duration: back to inactive, nothing fired.
    Cleared,
    /// The breach held for the duration.
    Firing,
    /// A firing alert's breach ended.
    Resolved,
}

/// Advances one alert by an observation at `now`. `value` is `None` when the signal has no data
/// (no attempts yet, say): that counts as no breach.
pub fn step(
    state: &mut AlertState,
    rule: &AlertRule,
    value: Option<f64>,
    now: Timestamp,
) -> Option<Transition> {
    let breached = value.is_some_and(|v| rule.comparison.breached(v, rule.threshold));
    let hold = chrono::Duration::from_std(rule.for_).unwrap_or(chrono::Duration::MAX);
    let (next, transition) = match (*state, breached) {
        (AlertState::Inactive, false) => (AlertState::Inactive, None),
        (AlertState::Inactive, true) if rule.for_.is_zero() => (
            AlertState::Firing {
                since: now,
                breached_since: now,
            },
            Some(Transition::Firing),
        ),
        (AlertState::Inactive, true) => (
            AlertState::Pending { since: now },
            Some(Transition::Pending),
        ),
        (AlertState::Pending { .. }, false) => (AlertState::Inactive, Some(Transition::Cleared)),
        (AlertState::Pending { since }, true) if now - since >= hold => (
            AlertState::Firing {
                since: now,
                breached_since: since,
            },
            Some(Transition::Firing),
        ),
        (pending @ AlertState::Pending { .. }, true) => (pending, None),
        (firing @ AlertState::Firing { .. }, true) => (firing, None),
        (AlertState::Firing { .. }, false) => (AlertState::Inactive, Some(Transition::Resolved)),
    };
    *state = next;
    transition
}

/// The `q`-quantile (0 to 1) of `values` by the nearest-rank method; `None` when empty.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(s: i64) -> Timestamp {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .unwrap_or_default()
    }

    fn success_rate_low() -> AlertRule {
        default_rules().remove(0)
    }

    #[test]
    fn a_breach_fires_only_after_holding_for_the_duration() {
        let rule = success_rate_low();
        let mut s = AlertState::default();
        assert_eq!(step(&mut s, &rule, Some(0.95), at(0)), None);
        assert_eq!(
            step(&mut s, &rule, Some(0.85), at(10)),
            Some(Transition::Pending)
        );
        assert_eq!(step(&mut s, &rule, Some(0.80), at(200)), None);
        assert_eq!(step(&mut s, &rule, Some(0.85), at(309)), None);
        assert_eq!(
            step(&mut s, &rule, Some(0.85), at(310)),
            Some(Transition::Firing)
        );
        assert_eq!(
            s,
            AlertState::Firing {
                since: at(310),
                breached_since: at(10)
            }
        );
        assert_eq!(
            step(&mut s, &rule, Some(0.5), at(400)),
            None,
            "firing stays firing"
        );
        assert_eq!(
            step(&mut s, &rule, Some(0.95), at(500)),
            Some(Transition::Resolved)
        );
        assert_eq!(s, AlertState::Inactive);
    }

    #[test]
    fn a_short_breach_clears_without_firing() {
        let rule = success_rate_low();
        let mut s = AlertState::default();
        step(&mut s, &rule, Some(0.5), at(0));
        assert_eq!(
            step(&mut s, &rule, Some(0.99), at(299)),
            Some(Transition::Cleared)
        );
        // A new breach starts the clock again.
        assert_eq!(
            step(&mut s, &rule, Some(0.5), at(300)),
            Some(Transition::Pending)
        );
        assert_eq!(step(&mut s, &rule, Some(0.5), at(599)), None);
    }

    #[test]
    fn no_data_is_no_breach_and_zero_duration_fires_at_once() {
        let mut rule = success_rate_low();
        let mut s = AlertState::default();
        assert_eq!(step(&mut s, &rule, None, at(0)), None);
        rule.for_ = Duration::ZERO;
        assert_eq!(
            step(&mut s, &rule, Some(0.1), at(1)),
            Some(Transition::Firing)
        );
        assert_eq!(step(&mut s, &rule, None, at(2)), Some(Transition::Resolved));
    }

    #[test]
    fn comparisons_and_quantiles() {
        assert!(Comparison::Below.breached(0.1, 0.2));
        assert!(!Comparison::Below.breached(0.2, 0.2));
        assert!(Comparison::AtMost.breached(0.2, 0.2));
        assert!(Comparison::Above.breached(31.0, 30.0));
        assert!(Comparison::AtLeast.breached(30.0, 30.0));
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.95), Some(95.0));
        assert_eq!(quantile(&mut [], 0.95), None);
    }

    #[test]
    fn the_classic_four_are_the_defaults() {
        let rules = default_rules();
        let summary: Vec<_> = rules
            .iter()
            .map(|r| {
                (
                    r.signal,
                    r.comparison,
                    r.threshold,
                    r.for_.as_secs(),
                    r.severity,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    Signal::SuccessRate,
                    Comparison::Below,
                    0.9,
                    300,
                    Severity::Warning
                ),
                (
                    Signal::SuccessRate,
                    Comparison::Below,
                    0.8,
                    180,
                    Severity::Critical
                ),
                (
                    Signal::P95ResponseTime,
                    Comparison::Above,
                    30.0,
                    600,
                    Severity::Warning
                ),
                (
                    Signal::HourlyTokens,
                    Comparison::Above,
                    1_000_000.0,
                    60,
                    Severity::Critical
                ),
            ]
        );
    }
}
