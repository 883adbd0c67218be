//! Unit tests of the alert rules and their state machine.

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

#[test]
fn each_signal_says_which_dimensions_it_has_default_first() {
    use Dimension::*;
    let table: Vec<(Signal, &[Dimension])> =
        Signal::ALL.iter().map(|s| (*s, s.dimensions())).collect();
    assert_eq!(
        table,
        [
            (Signal::SuccessRate, &[AgentType, Model][..]),
            (Signal::ErrorRate, &[AgentType, Model][..]),
            (Signal::P95ResponseTime, &[AgentType, Model][..]),
            (Signal::QueueLength, &[AgentType][..]),
            (Signal::HourlyTokens, &[Total, Tenant, Model][..]),
            (Signal::HealthyInstances, &[AgentType][..]),
            (Signal::BudgetUtilisation, &[Tenant][..]),
        ]
    );
    assert_eq!(Signal::HourlyTokens.default_dimension(), Total);
    assert!(!Signal::QueueLength.supports(Tenant));
}

#[test]
fn a_filter_implies_its_dimension_and_by_may_not_contradict_it() {
    let tenant = "0190f1a2-0000-7000-8000-000000000001";
    let req = |by, agent_type, model, tenant| ScopeRequest {
        by,
        agent_type,
        model,
        tenant,
    };
    // Nothing said: the signal's default, every value.
    assert_eq!(
        scope(Signal::SuccessRate, &req(None, None, None, None)),
        Ok((Dimension::AgentType, None))
    );
    assert_eq!(
        scope(Signal::HourlyTokens, &req(None, None, None, None)),
        Ok((Dimension::Total, None))
    );
    // `by` alone.
    assert_eq!(
        scope(
            Signal::ErrorRate,
            &req(Some(Dimension::Model), None, None, None)
        ),
        Ok((Dimension::Model, None))
    );
    // A filter alone, or with the same `by`.
    assert_eq!(
        scope(Signal::HourlyTokens, &req(None, None, None, Some(tenant))),
        Ok((Dimension::Tenant, Some(tenant.to_owned())))
    );
    assert_eq!(
        scope(
            Signal::P95ResponseTime,
            &req(Some(Dimension::Model), None, Some("gpt-4o"), None)
        ),
        Ok((Dimension::Model, Some("gpt-4o".to_owned())))
    );
    assert_eq!(
        scope(Signal::QueueLength, &req(None, Some("code"), None, None)),
        Ok((Dimension::AgentType, Some("code".to_owned())))
    );
    let err = |signal, r: ScopeRequest<'_>| scope(signal, &r).err().map(|e| (e.key, e.message));
    // Contradictions and unsupported combinations name the key and what is allowed.
    let (key, message) = err(
        Signal::SuccessRate,
        req(Some(Dimension::AgentType), None, Some("gpt-4o"), None),
    )
    .unwrap_or_default();
    assert_eq!(key, "by");
    assert!(message.contains("contradicts"), "{message}");
    let (key, message) = err(
        Signal::QueueLength,
        req(Some(Dimension::Tenant), None, None, None),
    )
    .unwrap_or_default();
    assert_eq!(key, "by");
    assert!(message.contains("allowed: `agent_type`"), "{message}");
    let (key, message) =
        err(Signal::BudgetUtilisation, req(None, None, Some("m"), None)).unwrap_or_default();
    assert_eq!(key, "model");
    assert!(message.contains("allowed: `tenant`"), "{message}");
    let (key, message) = err(
        Signal::HourlyTokens,
        req(Some(Dimension::AgentType), None, None, None),
    )
    .unwrap_or_default();
    assert_eq!(key, "by");
    assert!(
        message.contains("allowed: `total`, `tenant`, `model`"),
        "{message}"
    );
    let (key, _) = err(
        Signal::HourlyTokens,
        req(None, None, Some("m"), Some(tenant)),
    )
    .unwrap_or_default();
    assert_eq!(key, "tenant", "two filters");
    let (key, message) =
        err(Signal::HourlyTokens, req(None, None, None, Some("acme"))).unwrap_or_default();
    assert_eq!(key, "tenant");
    assert!(message.contains("not a tenant id"), "{message}");
    let (key, _) = err(Signal::SuccessRate, req(None, Some(""), None, None)).unwrap_or_default();
    assert_eq!(key, "agent_type");
}

#[test]
fn actions_apply_where_they_have_something_to_act_on() {
    use Dimension::*;
    assert!(Action::RateLimit.applies_to(Signal::HourlyTokens, Total));
    assert!(Action::RateLimit.applies_to(Signal::HourlyTokens, Tenant));
    assert!(Action::RateLimit.applies_to(Signal::BudgetUtilisation, Tenant));
    assert!(!Action::RateLimit.applies_to(Signal::HourlyTokens, Model));
    assert!(!Action::RateLimit.applies_to(Signal::SuccessRate, AgentType));
    assert!(Action::ScaleUp.applies_to(Signal::SuccessRate, AgentType));
    assert!(!Action::ScaleUp.applies_to(Signal::SuccessRate, Model));
    assert!(Action::Notify.applies_to(Signal::BudgetUtilisation, Tenant));
    assert!(Action::EmergencyMode.applies_to(Signal::ErrorRate, Model));
}

#[test]
fn budget_utilisation_is_the_highest_budget_with_its_period() {
    assert_eq!(budget_utilisation(&[]), None);
    assert_eq!(
        budget_utilisation(&[(Period::Daily, 0.4), (Period::Monthly, 0.95)]),
        Some((Period::Monthly, 0.95))
    );
    assert_eq!(
        budget_utilisation(&[(Period::Daily, 1.2), (Period::Monthly, 0.3)]),
        Some((Period::Daily, 1.2))
    );
    assert_eq!(
        budget_utilisation(&[(Period::Daily, f64::NAN), (Period::Monthly, 0.3)]),
        Some((Period::Monthly, 0.3))
    );
}

#[test]
fn the_token_default_is_by_tenant_and_the_others_by_their_default() {
    let scopes: Vec<_> = default_rules()
        .iter()
        .map(|r| (r.name.clone(), r.by, r.only.clone()))
        .collect();
    assert_eq!(
        scopes,
        [
            ("success_rate_low".to_owned(), Dimension::AgentType, None),
            (
                "success_rate_critical".to_owned(),
                Dimension::AgentType,
                None
            ),
            ("response_time_high".to_owned(), Dimension::AgentType, None),
            ("hourly_tokens_high".to_owned(), Dimension::Tenant, None),
        ]
    );
    for rule in default_rules() {
        for action in &rule.actions {
            assert!(action.applies_to(rule.signal, rule.by), "{}", rule.name);
        }
    }
}

#[test]
fn names_are_pinned() {
    use crate::enum_names::{assert_names, parse_with_serde};
    use strum::IntoEnumIterator;
    assert_names(
        &[
            (Signal::SuccessRate, "success_rate"),
            (Signal::ErrorRate, "error_rate"),
            (Signal::P95ResponseTime, "p95_response_time"),
            (Signal::QueueLength, "queue_length"),
            (Signal::HourlyTokens, "hourly_tokens"),
            (Signal::HealthyInstances, "healthy_instances"),
            (Signal::BudgetUtilisation, "budget_utilisation"),
        ],
        Signal::as_str,
        parse_with_serde,
    );
    assert_eq!(Signal::ALL.to_vec(), Signal::iter().collect::<Vec<_>>());
    assert_names(
        &[
            (Dimension::AgentType, "agent_type"),
            (Dimension::Model, "model"),
            (Dimension::Tenant, "tenant"),
            (Dimension::Total, "total"),
        ],
        Dimension::as_str,
        parse_with_serde,
    );
    assert_names(
        &[
            (Comparison::Below, "<"),
            (Comparison::AtMost, "<="),
            (Comparison::Above, ">"),
            (Comparison::AtLeast, ">="),
        ],
        Comparison::as_str,
        parse_with_serde,
    );
    assert_names(
        &[
            (Severity::Info, "info"),
            (Severity::Warning, "warning"),
            (Severity::Critical, "critical"),
        ],
        Severity::as_str,
        parse_with_serde,
    );
    assert_names(
        &[
            (Action::Notify, "notify"),
            (Action::ScaleUp, "scale_up"),
            (Action::EmergencyMode, "emergency_mode"),
            (Action::RateLimit, "rate_limit"),
        ],
        Action::as_str,
        parse_with_serde,
    );
}

#[test]
fn a_tenant_silences_only_its_own_notify_only_alerts_by_tenant() {
    let own = crate::id::TenantId(uuid::Uuid::from_u128(1));
    let other = crate::id::TenantId(uuid::Uuid::from_u128(2));
    let by_tenant = AlertRule {
        name: "tenant_tokens".to_owned(),
        by: Dimension::Tenant,
        signal: Signal::HourlyTokens,
        actions: vec![Action::Notify],
        ..success_rate_low()
    };
    assert_eq!(tenant_may_silence(&by_tenant, Some(own), own), Ok(()));
    // Another tenant's alert, or every tenant's.
    assert!(tenant_may_silence(&by_tenant, Some(other), own).is_err());
    assert!(tenant_may_silence(&by_tenant, None, own).is_err());
    // A platform safety switch aimed at the tenant itself.
    let limiting = AlertRule {
        actions: vec![Action::Notify, Action::RateLimit],
        ..by_tenant.clone()
    };
    let refused = tenant_may_silence(&limiting, Some(own), own);
    assert!(
        refused.as_ref().is_err_and(|m| m.contains("rate_limit")),
        "{refused:?}"
    );
    // A rule not evaluated by tenant is the platform's.
    assert!(tenant_may_silence(&success_rate_low(), Some(own), own).is_err());
}
