//! Short rolling windows the alert engine reads: `/execute` durations per agent type and model
//! calls through the gateway per model (outcomes and durations, for rates and p95 over the last
//! five minutes), and model tokens per minute by tenant and by model (for the last hour).
//! Bounded: at most `MAX_SAMPLES` samples per agent type or model, one bucket per minute for
//! tokens.
//!
//! Tokens reach the windows by two paths: the gateway meters every call it serves, and an
//! agent's `/execute` reply may report the tokens its task used. An agent that calls models
//! through the gateway under its task token would report the same tokens a second time, so the
//! gateway's count wins: tokens the gateway metered for a task call are held as a credit of the
//! tenant, and tokens agents report for that tenant within the hour are first taken from that
//! credit; only the rest (models called elsewhere) count. Per model, only the gateway's count is
//! known (agents' reports reach the windows without their model).

use flotilla_core::id::TenantId;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Window of the response-time percentile and of the gateway's per-model rates.
pub const RESPONSE_WINDOW: Duration = Duration::from_secs(300);
const TOKEN_WINDOW: Duration = Duration::from_secs(3600);
const MAX_SAMPLES: usize = 10_000;

/// The windows.
#[derive(Default)]
pub struct Recent {
    responses: Mutex<HashMap<String, VecDeque<(Instant, f64)>>>,
    /// Gateway calls that reached a provider, per served model.
    calls: Mutex<HashMap<String, VecDeque<CallSample>>>,
    tokens: Mutex<VecDeque<Minute>>,
}

/// (when, answered, seconds).
type CallSample = (Instant, bool, f64);

/// One minute of tokens.
struct Minute {
    start: Instant,
    by_tenant: HashMap<TenantId, u64>,
    by_model: HashMap<String, u64>,
    /// Tokens the gateway metered for task calls, not yet matched by an agent's report.
    credit: HashMap<TenantId, u64>,
}

/// One finished gateway call, as the windows need it.
#[derive(Clone, Debug)]
pub struct GatewayCall<'a> {
    pub tenant: TenantId,
    /// The model that served it.
    pub model: &'a str,
    /// Made under a task's token (an agent working on a task), whose `/execute` reply may
    /// report the same tokens.
    pub for_task: bool,
    /// `Some(true)` answered, `Some(false)` failed; `None` when no provider's outcome counts
    /// (refused before a provider, or the client went away).
    pub ok: Option<bool>,
    /// How long the call took, in seconds.
    pub seconds: f64,
    pub tokens: u64,
}

/// The gateway calls of one model over the last [`RESPONSE_WINDOW`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelCalls {
    pub ok: u64,
    pub failed: u64,
    /// Durations of every call counted, in seconds.
    pub durations: Vec<f64>,
}

impl ModelCalls {
    /// Share of answered calls; `None` without calls.
    pub fn success_rate(&self) -> Option<f64> {
        let total = self.ok + self.failed;
        (total > 0).then(|| self.ok as f64 / total as f64)
    }
}

impl Recent {
    /// Records one `/execute` duration in seconds.
    pub fn record_response(&self, agent_type: &str, seconds: f64) {
        let Ok(mut map) = self.responses.lock() else {
            return;
        };
        let samples = map.entry(agent_type.to_owned()).or_default();
        samples.push_back((Instant::now(), seconds));
        if samples.len() > MAX_SAMPLES {
            samples.pop_front();
        }
    }

    /// Durations of the last [`RESPONSE_WINDOW`] for one agent type.
    pub fn responses(&self, agent_type: &str) -> Vec<f64> {
        let Ok(mut map) = self.responses.lock() else {
            return Vec::new();
        };
        let Some(samples) = map.get_mut(agent_type) else {
            return Vec::new();
        };
        while samples
            .front()
            .is_some_and(|(at, _)| at.elapsed() > RESPONSE_WINDOW)
        {
            samples.pop_front();
        }
        samples.iter().map(|(_, s)| *s).collect()
    }

    /// Records a finished gateway call: its outcome and duration per model, its tokens per
    /// tenant and model.
    pub fn record_gateway_call(&self, call: &GatewayCall<'_>) {
        if let Some(ok) = call.ok
            && let Ok(mut map) = self.calls.lock()
        {
            let samples = map.entry(call.model.to_owned()).or_default();
            samples.push_back((Instant::now(), ok, call.seconds));
            if samples.len() > MAX_SAMPLES {
                samples.pop_front();
            }
        }
        if call.tokens == 0 {
            return;
        }
        self.with_minute(|minute| {
            *minute.by_tenant.entry(call.tenant).or_default() += call.tokens;
            *minute.by_model.entry(call.model.to_owned()).or_default() += call.tokens;
            if call.for_task {
                *minute.credit.entry(call.tenant).or_default() += call.tokens;
            }
        });
    }

    /// Records model tokens an agent reported for a task of `tenant`, less what the gateway
    /// already metered for that tenant's task calls within the hour (see the module header).
    pub fn record_tokens(&self, tenant: TenantId, tokens: u64) {
        let Ok(mut buckets) = self.tokens.lock() else {
            return;
        };
        prune(&mut buckets);
        let mut rest = tokens;
        for minute in buckets.iter_mut() {
            if rest == 0 {
                break;
            }
            if let Some(credit) = minute.credit.get_mut(&tenant) {
                let taken = rest.min(*credit);
                *credit -= taken;
                rest -= taken;
                if *credit == 0 {
                    minute.credit.remove(&tenant);
                }
            }
        }
        if rest > 0 {
            *current(&mut buckets).by_tenant.entry(tenant).or_default() += rest;
        }
    }

    /// Tokens used over the last hour, per tenant.
    pub fn tokens_last_hour_by_tenant(&self) -> HashMap<TenantId, u64> {
        self.sum(|m| m.by_tenant.iter().map(|(k, v)| (*k, *v)).collect())
    }

    /// Tokens the gateway metered over the last hour, per served model.
    pub fn tokens_last_hour_by_model(&self) -> HashMap<String, u64> {
        self.sum(|m| m.by_model.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }

    /// Tokens used over the last hour.
    pub fn tokens_last_hour(&self) -> u64 {
        self.tokens_last_hour_by_tenant().values().sum()
    }

    /// Gateway calls of the last [`RESPONSE_WINDOW`], per model that has any.
    pub fn model_calls(&self) -> BTreeMap<String, ModelCalls> {
        let Ok(mut map) = self.calls.lock() else {
            return BTreeMap::new();
        };
        map.retain(|_, samples| {
            while samples
                .front()
                .is_some_and(|(at, _, _)| at.elapsed() > RESPONSE_WINDOW)
            {
                samples.pop_front();
            }
            !samples.is_empty()
        });
        map.iter()
            .map(|(model, samples)| {
                let mut calls = ModelCalls::default();
                for (_, ok, seconds) in samples {
                    if *ok {
                        calls.ok += 1;
                    } else {
                        calls.failed += 1;
                    }
                    calls.durations.push(*seconds);
                }
                (model.clone(), calls)
            })
            .collect()
    }

    fn with_minute(&self, f: impl FnOnce(&mut Minute)) {
        if let Ok(mut buckets) = self.tokens.lock() {
            f(current(&mut buckets));
        }
    }

    fn sum<K: std::hash::Hash + Eq>(
        &self,
        of: impl Fn(&Minute) -> Vec<(K, u64)>,
    ) -> HashMap<K, u64> {
        let Ok(mut buckets) = self.tokens.lock() else {
            return HashMap::new();
        };
        prune(&mut buckets);
        let mut totals = HashMap::new();
        for (key, n) in buckets.iter().flat_map(of) {
            *totals.entry(key).or_default() += n;
        }
        totals.retain(|_, n| *n > 0);
        totals
    }
}

/// Drops the minutes older than the hour.
fn prune(buckets: &mut VecDeque<Minute>) {
    while buckets
        .front()
        .is_some_and(|m| m.start.elapsed() > TOKEN_WINDOW)
    {
        buckets.pop_front();
    }
}

/// The bucket of the current minute, started if needed.
fn current(buckets: &mut VecDeque<Minute>) -> &mut Minute {
    let fresh = buckets
        .back()
        .is_none_or(|m| m.start.elapsed() >= Duration::from_secs(60));
    if fresh {
        buckets.push_back(Minute {
            start: Instant::now(),
            by_tenant: HashMap::new(),
            by_model: HashMap::new(),
            credit: HashMap::new(),
        });
    }
    // Just pushed when it was empty.
    let last = buckets.len() - 1;
    &mut buckets[last]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(tenant: TenantId, model: &str, for_task: bool, tokens: u64) -> GatewayCall<'_> {
        GatewayCall {
            tenant,
            model,
            for_task,
            ok: Some(true),
            seconds: 0.5,
            tokens,
        }
    }

    #[test]
    fn an_agent_reporting_its_gateway_tokens_is_not_counted_twice() {
        let a = TenantId(uuid::Uuid::from_u128(1));
        let b = TenantId(uuid::Uuid::from_u128(2));
        let recent = Recent::default();
        // Tenant a's agent calls the gateway for 100 tokens, then reports 130 (30 from a model
        // called directly); tenant a also calls the gateway with its own key for 50.
        recent.record_gateway_call(&call(a, "gpt-4o", true, 100));
        recent.record_gateway_call(&call(a, "gpt-4o", false, 50));
        recent.record_tokens(a, 80);
        recent.record_tokens(a, 50);
        // Tenant b's agent reports tokens without any gateway call: all count.
        recent.record_tokens(b, 40);
        let by_tenant = recent.tokens_last_hour_by_tenant();
        assert_eq!(by_tenant.get(&a), Some(&180));
        assert_eq!(by_tenant.get(&b), Some(&40));
        assert_eq!(recent.tokens_last_hour(), 220);
        assert_eq!(
            recent.tokens_last_hour_by_model(),
            HashMap::from([("gpt-4o".to_owned(), 150)])
        );
    }

    #[test]
    fn model_calls_give_rates_and_durations_and_skip_outcomes_that_do_not_count() {
        let t = TenantId(uuid::Uuid::from_u128(1));
        let recent = Recent::default();
        for (ok, seconds) in [(Some(true), 1.0), (Some(false), 3.0), (None, 9.0)] {
            recent.record_gateway_call(&GatewayCall {
                ok,
                seconds,
                ..call(t, "m", false, 0)
            });
        }
        let calls = recent.model_calls();
        let m = calls.get("m").cloned().unwrap_or_default();
        assert_eq!((m.ok, m.failed), (1, 1));
        assert_eq!(m.durations, [1.0, 3.0]);
        assert_eq!(m.success_rate(), Some(0.5));
        assert_eq!(ModelCalls::default().success_rate(), None);
    }
}
