//! The built-in signals, read once per evaluation round from the registry, the store and the
//! rolling windows.

use crate::app::AppState;
use flotilla_core::alert::{AlertRule, Signal, quantile};
use std::collections::{BTreeMap, BTreeSet};

/// One round's values.
pub(super) struct Values {
    per_type: BTreeMap<String, PerType>,
    hourly_tokens: f64,
}

#[derive(Default)]
struct PerType {
    success_rate: Option<f64>,
    p95_response_time: Option<f64>,
    queue_length: f64,
    healthy_instances: f64,
}

impl Values {
    /// The (agent type, value) pairs a rule is evaluated on: one per agent type for per-type
    /// signals (or just the rule's type), one overall for the others.
    pub(super) fn for_rule(&self, rule: &AlertRule) -> Vec<(Option<String>, Option<f64>)> {
        if !rule.signal.per_agent_type() {
            return vec![(None, Some(self.hourly_tokens))];
        }
        let value = |t: &PerType| match rule.signal {
            Signal::SuccessRate => t.success_rate,
            Signal::ErrorRate => t.success_rate.map(|r| 1.0 - r),
            Signal::P95ResponseTime => t.p95_response_time,
            Signal::QueueLength => Some(t.queue_length),
            Signal::HealthyInstances => Some(t.healthy_instances),
            Signal::HourlyTokens => None,
        };
        match &rule.agent_type {
            Some(agent_type) => {
                let v = self
                    .per_type
                    .get(agent_type)
                    .map_or_else(|| value(&PerType::default()), value);
                vec![(Some(agent_type.clone()), v)]
            }
            None => self
                .per_type
                .iter()
                .map(|(t, v)| (Some(t.clone()), value(v)))
                .collect(),
        }
    }
}

/// Reads every signal. A store error leaves queue lengths at 0 for the round (and is logged).
pub(super) async fn read(state: &AppState) -> Values {
    let queued = match state.store.queued_by_type().await {
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
    Values {
        per_type,
        hourly_tokens: state.recent.tokens_last_hour() as f64,
    }
}
