//! The built-in signals, read once per evaluation round from the registry, the store, the
//! rolling windows and the gateway's budgets, with a value for each dimension a signal has
//! (docs/design.md §11): per agent type, per model, per tenant, or in total.

use super::Alerts;
use crate::telemetry::recent::ModelCalls;
use flotilla_core::alert::{AlertRule, Dimension, Signal, budget_utilisation, quantile};
use flotilla_core::budget::Period;
use flotilla_core::id::TenantId;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One round's values.
pub(super) struct Values {
    per_type: BTreeMap<String, PerType>,
    /// Models of the gateway's table, and any other that served a call in the windows.
    models: BTreeSet<String>,
    model_calls: BTreeMap<String, ModelCalls>,
    tokens_by_model: HashMap<String, u64>,
    tokens_by_tenant: HashMap<TenantId, u64>,
    hourly_tokens: f64,
    /// Each tenant's highest budget utilisation and its period (read only when a rule needs it).
    budgets: BTreeMap<TenantId, (Period, f64)>,
}

#[derive(Default)]
struct PerType {
    success_rate: Option<f64>,
    p95_response_time: Option<f64>,
    queue_length: f64,
    healthy_instances: f64,
}

/// A rule's value for one value of its dimension.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Reading {
    /// The agent type, model or tenant id; `None` by total.
    pub subject: Option<String>,
    /// `None`: no data (no breach).
    pub value: Option<f64>,
    /// Said after the value in messages (which budget, for `budget_utilisation`).
    pub note: Option<String>,
}

impl Values {
    /// The readings a rule is evaluated on: one per value of its dimension (or just the one it
    /// names), one overall by total.
    pub(super) fn for_rule(&self, rule: &AlertRule) -> Vec<Reading> {
        let reading = |subject: &str, value| Reading {
            subject: Some(subject.to_owned()),
            value,
            note: None,
        };
        match rule.by {
            Dimension::Total => vec![Reading {
                subject: None,
                value: Some(self.hourly_tokens),
                note: None,
            }],
            Dimension::AgentType => {
                let value = |t: &PerType| match rule.signal {
                    Signal::SuccessRate => t.success_rate,
                    Signal::ErrorRate => t.success_rate.map(|r| 1.0 - r),
                    Signal::P95ResponseTime => t.p95_response_time,
                    Signal::QueueLength => Some(t.queue_length),
                    Signal::HealthyInstances => Some(t.healthy_instances),
                    Signal::HourlyTokens | Signal::BudgetUtilisation => None,
                };
                match &rule.only {
                    Some(t) => vec![reading(
                        t,
                        self.per_type
                            .get(t)
                            .map_or_else(|| value(&PerType::default()), value),
                    )],
                    None => self
                        .per_type
                        .iter()
                        .map(|(t, v)| reading(t, value(v)))
                        .collect(),
                }
            }
            Dimension::Model => {
                let value = |model: &str| {
                    let calls = self.model_calls.get(model);
                    match rule.signal {
                        Signal::SuccessRate => calls.and_then(ModelCalls::success_rate),
                        Signal::ErrorRate => {
                            calls.and_then(ModelCalls::success_rate).map(|r| 1.0 - r)
                        }
                        Signal::P95ResponseTime => {
                            calls.and_then(|c| quantile(&mut c.durations.clone(), 0.95))
                        }
                        Signal::HourlyTokens => {
                            Some(self.tokens_by_model.get(model).copied().unwrap_or(0) as f64)
                        }
                        _ => None,
                    }
                };
                match &rule.only {
                    Some(m) => vec![reading(m, value(m))],
                    None => self.models.iter().map(|m| reading(m, value(m))).collect(),
                }
            }
            Dimension::Tenant => {
                let tenants: Vec<TenantId> = match &rule.only {
                    Some(t) => t.parse().ok().into_iter().collect(),
                    None if rule.signal == Signal::BudgetUtilisation => {
                        self.budgets.keys().copied().collect()
                    }
                    None => {
                        let mut t: Vec<_> = self.tokens_by_tenant.keys().copied().collect();
                        t.sort();
                        t
                    }
                };
                tenants
                    .into_iter()
                    .map(|tenant| match rule.signal {
                        Signal::BudgetUtilisation => {
                            let budget = self.budgets.get(&tenant);
                            Reading {
                                subject: Some(tenant.to_string()),
                                value: budget.map(|(_, ratio)| *ratio),
                                note: budget
                                    .map(|(period, _)| format!("{} budget", period.as_str())),
                            }
                        }
                        _ => reading(
                            &tenant.to_string(),
                            Some(self.tokens_by_tenant.get(&tenant).copied().unwrap_or(0) as f64),
                        ),
                    })
                    .collect()
            }
        }
    }
}

/// Reads every signal. A store error leaves queue lengths at 0 (or budgets unknown) for the
/// round, and is logged.
pub(super) async fn read(state: &Alerts) -> Values {
    let rules = &state.config.alerting.rules;
    let queued = match state.store.queued_by_type(None).await {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(error = %e, "Alert engine: cannot read queue lengths");
            state.metrics.store_errors.inc();
            Default::default()
        }
    };
    let mut types: BTreeSet<String> = state.config.pools.iter().map(|p| p.name.clone()).collect();
    types.extend(state.registry.types());
    types.extend(queued.keys().cloned());
    let per_type = types
        .into_iter()
        .map(|t| {
            let mut responses = state.recent.responses(&t);
            let values = PerType {
                success_rate: state.registry.success_rate(&t),
                p95_response_time: quantile(&mut responses, 0.95),
                queue_length: queued.get(&t).copied().unwrap_or(0) as f64,
                healthy_instances: f64::from(state.registry.counts(&t).accepting),
            };
            (t, values)
        })
        .collect();
    let model_calls = state.recent.model_calls();
    let tokens_by_model = state.recent.tokens_last_hour_by_model();
    let mut models: BTreeSet<String> = state
        .config
        .gateway
        .models
        .iter()
        .map(|m| m.name.clone())
        .collect();
    models.extend(model_calls.keys().cloned());
    models.extend(tokens_by_model.keys().cloned());
    let tokens_by_tenant = state.recent.tokens_last_hour_by_tenant();
    let hourly_tokens = tokens_by_tenant.values().sum::<u64>() as f64;
    let mut budgets = BTreeMap::new();
    if rules.iter().any(|r| r.signal == Signal::BudgetUtilisation) {
        let mut by_tenant: BTreeMap<TenantId, Vec<(Period, f64)>> = BTreeMap::new();
        for (budget, ratio) in state
            .gateway
            .budgets
            .utilisation(state.clock.now(), &state.metrics)
            .await
            .unwrap_or_default()
        {
            by_tenant
                .entry(budget.tenant_id)
                .or_default()
                .push((budget.period, ratio));
        }
        budgets = by_tenant
            .into_iter()
            .filter_map(|(tenant, ratios)| Some((tenant, budget_utilisation(&ratios)?)))
            .collect();
    }
    Values {
        per_type,
        models,
        model_calls,
        tokens_by_model,
        tokens_by_tenant,
        hourly_tokens,
        budgets,
    }
}
