//! Alert rules and their state machine (docs/design.md §11): inactive → pending → firing → resolved.
//!
//! A rule compares one built-in signal with a threshold; a breach must hold for the rule's `for`
//! duration before the alert fires. A rule is evaluated by one [`Dimension`] (agent type, model,
//! tenant, or the whole system): each value of it (each agent type, say) has its own alert and
//! state. `step` is a pure function of the previous state, the signal's value and the time.

use crate::Timestamp;
use crate::budget::Period;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// What a rule watches.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Signal {
    /// Share of successful attempts (0 to 1): per agent type, or per model (calls through the
    /// gateway over the last 5 minutes that reached a provider).
    SuccessRate,
    /// Share of failed attempts (0 to 1), per agent type or per model.
    ErrorRate,
    /// 95th percentile of durations over the last 5 minutes, in seconds: of `/execute` calls per
    /// agent type, or of gateway calls per model.
    P95ResponseTime,
    /// Tasks waiting, per agent type.
    QueueLength,
    /// Model tokens used over the last hour: all together, per tenant or per model.
    HourlyTokens,
    /// Instances taking work, per agent type.
    HealthyInstances,
    /// A tenant's spend over its budget's limit in the current window (0 and up; 1 is the
    /// limit), the highest of its daily and monthly budgets. Per tenant.
    BudgetUtilisation,
}

/// What a rule's alerts are split by: each value of the dimension has its own alert.
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
    strum::IntoStaticStr,
)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Dimension {
    /// One alert per agent type (pool or registered type).
    AgentType,
    /// One alert per model (as the gateway served it).
    Model,
    /// One alert per tenant, named by its id.
    Tenant,
    /// One alert for the whole system.
    Total,
}

impl Dimension {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl Signal {
    /// Every signal.
    pub const ALL: [Signal; 7] = [
        Signal::SuccessRate,
        Signal::ErrorRate,
        Signal::P95ResponseTime,
        Signal::QueueLength,
        Signal::HourlyTokens,
        Signal::HealthyInstances,
        Signal::BudgetUtilisation,
    ];

    /// The dimensions the signal has values for; the first is the default.
    pub const fn dimensions(self) -> &'static [Dimension] {
        match self {
            Signal::SuccessRate | Signal::ErrorRate | Signal::P95ResponseTime => {
                &[Dimension::AgentType, Dimension::Model]
            }
            Signal::QueueLength | Signal::HealthyInstances => &[Dimension::AgentType],
            Signal::HourlyTokens => &[Dimension::Total, Dimension::Tenant, Dimension::Model],
            Signal::BudgetUtilisation => &[Dimension::Tenant],
        }
    }

    /// The dimension a rule that does not say is evaluated by.
    pub const fn default_dimension(self) -> Dimension {
        self.dimensions()[0]
    }

    /// True when the signal has values per `dimension`.
    pub fn supports(self, dimension: Dimension) -> bool {
        self.dimensions().contains(&dimension)
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How the value is compared with the threshold; a true comparison is a breach.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    #[serde(rename = "<")]
    #[strum(serialize = "<")]
    Below,
    #[serde(rename = "<=")]
    #[strum(serialize = "<=")]
    AtMost,
    #[serde(rename = ">")]
    #[strum(serialize = ">")]
    Above,
    #[serde(rename = ">=")]
    #[strum(serialize = ">=")]
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
    pub fn as_str(self) -> &'static str {
        self.into()
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
    strum::IntoStaticStr,
)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What firing does (and resolving undoes).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Action {
    /// Send to every configured notifier.
    Notify,
    /// Ask for one more instance in the affected pool.
    ScaleUp,
    /// Shed new low-priority work (priority below 5) with 503 until the alert resolves.
    EmergencyMode,
    /// Tighten a tenant's rate limit (to `alerting.rate_limit`) until the alert resolves: the
    /// alert's tenant on rules by tenant, the tenant that used the most model tokens in the last
    /// hour on `hourly_tokens` rules by total. See [`Action::applies_to`].
    RateLimit,
}

impl Action {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the action means something on a rule over `signal` by `by`: `scale_up` needs an
    /// agent type (its pool), `rate_limit` a tenant (the alert's, or the heaviest one on
    /// `hourly_tokens` by total).
    pub fn applies_to(self, signal: Signal, by: Dimension) -> bool {
        match self {
            Action::Notify | Action::EmergencyMode => true,
            Action::ScaleUp => by == Dimension::AgentType,
            Action::RateLimit => {
                by == Dimension::Tenant
                    || (signal == Signal::HourlyTokens && by == Dimension::Total)
            }
        }
    }
}

/// A validated rule.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRule {
    pub name: String,
    pub signal: Signal,
    /// What the rule's alerts are split by (one of `signal.dimensions()`).
    pub by: Dimension,
    /// Only this value of `by` (an agent type, a model, a tenant id); `None`: every value, each
    /// with its own state. Always `None` by [`Dimension::Total`].
    pub only: Option<String>,
    pub comparison: Comparison,
    pub threshold: f64,
    /// How long a breach must hold before the alert fires.
    pub for_: Duration,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub actions: Vec<Action>,
}

/// The classic defaults (docs/design.md §11), each by its signal's default dimension except
/// `hourly_tokens_high`, which is by tenant so that its `rate_limit` holds the tenant that
/// breached.
pub fn default_rules() -> Vec<AlertRule> {
    let rule =
        |name: &str, signal: Signal, comparison, threshold, secs, severity, actions: &[Action]| {
            AlertRule {
                name: name.to_owned(),
                signal,
                by: if signal == Signal::HourlyTokens {
                    Dimension::Tenant
                } else {
                    signal.default_dimension()
                },
                only: None,
                comparison,
                threshold,
                for_: Duration::from_secs(secs),
                severity,
                labels: BTreeMap::new(),
                actions: actions.to_vec(),
            }
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

/// What a rule's `by` and filters say, before validation: `by` if given, and at most one of
/// the filters `agent_type`, `model`, `tenant` (a filter implies its dimension).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeRequest<'a> {
    pub by: Option<Dimension>,
    pub agent_type: Option<&'a str>,
    pub model: Option<&'a str>,
    pub tenant: Option<&'a str>,
}

/// Why a rule's scope is refused; `key` is the offending setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeError {
    pub key: &'static str,
    pub message: String,
}

/// Resolves a rule's dimension and filter: the filter's dimension, else `by`, else the signal's
/// default; the dimension must be one the signal supports, and `by` may not contradict the
/// filter. Pure: the config layer adds the rule's position to the error.
pub fn scope(
    signal: Signal,
    request: &ScopeRequest<'_>,
) -> Result<(Dimension, Option<String>), ScopeError> {
    let filters: Vec<(Dimension, &str)> = [
        (Dimension::AgentType, request.agent_type),
        (Dimension::Model, request.model),
        (Dimension::Tenant, request.tenant),
    ]
    .into_iter()
    .filter_map(|(d, v)| v.map(|v| (d, v)))
    .collect();
    let allowed = || {
        signal
            .dimensions()
            .iter()
            .map(|d| format!("`{}`", d.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let [(first, _), (second, _), ..] = filters.as_slice() {
        return Err(ScopeError {
            key: second.as_str(),
            message: format!(
                "a rule filters on one value only; `{}` and `{}` are both set",
                first.as_str(),
                second.as_str()
            ),
        });
    }
    let filter = filters.first().copied();
    let by = match (request.by, filter) {
        (Some(by), Some((implied, _))) if by != implied => {
            return Err(ScopeError {
                key: "by",
                message: format!(
                    "`by = \"{}\"` contradicts the filter `{}` (which implies `by = \"{}\"`)",
                    by.as_str(),
                    implied.as_str(),
                    implied.as_str()
                ),
            });
        }
        (_, Some((implied, _))) => implied,
        (Some(by), None) => by,
        (None, None) => signal.default_dimension(),
    };
    if !signal.supports(by) {
        return Err(ScopeError {
            key: filter.map_or("by", |(d, _)| d.as_str()),
            message: format!(
                "signal `{}` has no values by `{}`; allowed: {}",
                signal.as_str(),
                by.as_str(),
                allowed()
            ),
        });
    }
    if let Some((d, value)) = filter {
        if value.is_empty() {
            return Err(ScopeError {
                key: d.as_str(),
                message: "must not be empty (leave it out for every value)".to_owned(),
            });
        }
        // Tenants are named by id, as in metrics and events: a name can change, an id cannot.
        if d == Dimension::Tenant && value.parse::<crate::id::TenantId>().is_err() {
            return Err(ScopeError {
                key: d.as_str(),
                message: format!(
                    "`{value}` is not a tenant id (a UUID, as `flotilla tenants list` shows)"
                ),
            });
        }
    }
    Ok((by, filter.map(|(_, v)| v.to_owned())))
}

/// A tenant's budget utilisation: the highest of its budgets' spent-over-limit ratios, with the
/// period of that budget; `None` when it has no budget.
pub fn budget_utilisation(budgets: &[(Period, f64)]) -> Option<(Period, f64)> {
    budgets
        .iter()
        .copied()
        .filter(|(_, ratio)| ratio.is_finite())
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Where one (rule, dimension value) alert stands.
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

/// Whether a tenant (not the platform: admins may silence anything) may silence an alert of
/// `rule` for `silenced` — or end such a silence. Only its own alerts of rules evaluated by
/// tenant, and only of rules that merely notify: scale-up, emergency mode and rate limits are
/// the platform's safety switches, which a tenant must not be able to turn off for itself.
/// `Err` says why not.
pub fn tenant_may_silence(
    rule: &AlertRule,
    silenced: Option<crate::id::TenantId>,
    caller: crate::id::TenantId,
) -> Result<(), String> {
    if rule.by != Dimension::Tenant {
        return Err(format!(
            "rule `{}` is evaluated by {}, not by tenant: only admins may silence it",
            rule.name,
            rule.by.as_str()
        ));
    }
    if silenced != Some(caller) {
        return Err(
            "a tenant may silence only its own alerts (`tenant` must be its own)".to_owned(),
        );
    }
    if let Some(action) = rule.actions.iter().find(|a| **a != Action::Notify) {
        return Err(format!(
            "rule `{}` acts on the platform ({}): only admins may silence it",
            rule.name,
            action.as_str()
        ));
    }
    Ok(())
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
mod tests;
