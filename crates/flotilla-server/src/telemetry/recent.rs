//! Short rolling windows the alert engine reads: `/execute` durations per agent type and model
//! calls through the gateway per model (outcomes and durations, for rates and p95 over the last
//! five minutes), and model tokens per minute by tenant and by model (for the last hour).
//! Bounded: at most `MAX_SAMPLES` samples per agent type or model, one bucket per minute for
//! tokens.
//!
//! With several control planes on one database only the leader runs the alert engine: the
//! others forward the tokens they count to it every second ([`TokenDelta`], over `NOTIFY`), so
//! its hourly token signals cover the deployment. Rates and percentiles are not forwarded: each
//! replica claims a share of the same queues, so the leader's own calls are a sample of them.
//!
//! Tokens reach the windows only from the gateway, which meters every call it serves. An agent's
//! `/execute` reply may report the tokens its task used, but that is the agent's say-so: it
//! reaches `ai_agent_token_usage_total` only (bounded by `flotilla_core::reported_usage`), never
//! these windows, so an agent cannot drive a tenant's hourly signal and its `rate_limit` alert
//! action. An agent that calls models through the gateway under its task token would report
//! the same tokens a second time, so the gateway's count wins: tokens the gateway metered for a
//! task's calls are held as that task's credit (input and output apart, for an hour), and the
//! tokens its agent reports are first taken from that credit; only the rest (models called
//! elsewhere) is counted in the metric. The credit is this
//! process's: an agent calls the gateway of the control plane that dispatched its task (the
//! URL in its `/execute` request), so with several replicas both usually meet in one process.

use flotilla_core::id::{TaskId, TenantId};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Window of the response-time percentile and of the gateway's per-model rates.
pub(crate) const RESPONSE_WINDOW: Duration = Duration::from_secs(300);
const TOKEN_WINDOW: Duration = Duration::from_secs(3600);
const MAX_SAMPLES: usize = 10_000;

/// The windows.
#[derive(Default)]
pub struct Recent {
    responses: Mutex<HashMap<String, VecDeque<(Instant, f64)>>>,
    /// Gateway calls that reached a provider, per served model.
    calls: Mutex<HashMap<String, VecDeque<CallSample>>>,
    tokens: Mutex<VecDeque<Minute>>,
    /// Input and output tokens the gateway metered per task, not yet matched by a report.
    credit: Mutex<HashMap<TaskId, Credit>>,
    /// With several control planes: tokens counted here since the leader was last told.
    outbox: Mutex<Option<TokenDelta>>,
}

/// Tokens counted by one control plane that the leader, which alone runs the alert engine,
/// adds to its windows (docs/design.md §9): so the hourly token signals cover every replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenDelta {
    pub by_tenant: HashMap<TenantId, u64>,
    pub by_model: HashMap<String, u64>,
}

impl TokenDelta {
    pub fn is_empty(&self) -> bool {
        self.by_tenant.is_empty() && self.by_model.is_empty()
    }

    /// Splits into deltas of at most `n` entries each (a notification's payload is bounded).
    pub fn chunks(self, n: usize) -> Vec<TokenDelta> {
        let n = n.max(1);
        let mut out = vec![TokenDelta::default()];
        for (tenant, tokens) in self.by_tenant {
            if out
                .last()
                .is_some_and(|d| d.by_tenant.len() + d.by_model.len() >= n)
            {
                out.push(TokenDelta::default());
            }
            if let Some(d) = out.last_mut() {
                d.by_tenant.insert(tenant, tokens);
            }
        }
        for (model, tokens) in self.by_model {
            if out
                .last()
                .is_some_and(|d| d.by_tenant.len() + d.by_model.len() >= n)
            {
                out.push(TokenDelta::default());
            }
            if let Some(d) = out.last_mut() {
                d.by_model.insert(model, tokens);
            }
        }
        out.retain(|d| !d.is_empty());
        out
    }
}

/// A task's metered tokens.
struct Credit {
    since: Instant,
    input: u64,
    output: u64,
}

/// Credits beyond this many are swept of those older than the hour.
const MAX_CREDITS: usize = 10_000;

/// (when, answered, seconds).
type CallSample = (Instant, bool, f64);

/// One minute of tokens.
struct Minute {
    start: Instant,
    by_tenant: HashMap<TenantId, u64>,
    by_model: HashMap<String, u64>,
}

/// One finished gateway call, as the windows need it.
#[derive(Clone, Debug)]
pub struct GatewayCall<'a> {
    pub tenant: TenantId,
    /// The model that served it.
    pub model: &'a str,
    /// The task whose token made it (an agent working on a task), whose `/execute` reply may
    /// report the same tokens.
    pub task: Option<TaskId>,
    /// `Some(true)` answered, `Some(false)` failed; `None` when no provider's outcome counts
    /// (refused before a provider, or the client went away).
    pub ok: Option<bool>,
    /// How long the call took, in seconds.
    pub seconds: f64,
    /// Every token (input, output and what else the provider counts).
    pub tokens: u64,
    pub input: u64,
    pub output: u64,
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
        });
        self.post(|delta| {
            *delta.by_tenant.entry(call.tenant).or_default() += call.tokens;
            *delta.by_model.entry(call.model.to_owned()).or_default() += call.tokens;
        });
        if let Some(task) = call.task
            && let Ok(mut credits) = self.credit.lock()
        {
            if credits.len() >= MAX_CREDITS {
                credits.retain(|_, c| c.since.elapsed() < TOKEN_WINDOW);
            }
            let credit = credits.entry(task).or_insert(Credit {
                since: Instant::now(),
                input: 0,
                output: 0,
            });
            credit.input += call.input;
            credit.output += call.output;
        }
    }

    /// Of the `(input, output)` tokens an agent reported for `task`, the part the gateway did
    /// not meter already (taken from the task's credit); see the module header.
    pub fn unmetered(&self, task: TaskId, input: u64, output: u64) -> (u64, u64) {
        let Ok(mut credits) = self.credit.lock() else {
            return (input, output);
        };
        let Some(credit) = credits.get_mut(&task) else {
            return (input, output);
        };
        if credit.since.elapsed() >= TOKEN_WINDOW {
            credits.remove(&task);
            return (input, output);
        }
        let (in_taken, out_taken) = (input.min(credit.input), output.min(credit.output));
        credit.input -= in_taken;
        credit.output -= out_taken;
        if credit.input == 0 && credit.output == 0 {
            credits.remove(&task);
        }
        (input - in_taken, output - out_taken)
    }

    /// Adds tokens to `tenant`'s windows. Nothing in the server calls it today: the gateway's
    /// calls go through [`Recent::record_gateway_call`], and tokens an agent reports must never
    /// come here (see the module header).
    pub fn record_tokens(&self, tenant: TenantId, tokens: u64) {
        if tokens > 0 {
            self.with_minute(|minute| *minute.by_tenant.entry(tenant).or_default() += tokens);
            self.post(|delta| *delta.by_tenant.entry(tenant).or_default() += tokens);
        }
    }

    /// From now on, keeps what is counted here for [`Recent::take_outbox`] (several control
    /// planes; without them nothing is kept).
    pub fn keep_outbox(&self) {
        if let Ok(mut outbox) = self.outbox.lock() {
            outbox.get_or_insert_with(TokenDelta::default);
        }
    }

    /// What was counted here since the last call.
    pub fn take_outbox(&self) -> TokenDelta {
        self.outbox
            .lock()
            .ok()
            .and_then(|mut outbox| outbox.as_mut().map(std::mem::take))
            .unwrap_or_default()
    }

    /// Adds what another control plane counted (on the leader).
    pub fn absorb(&self, delta: &TokenDelta) {
        self.with_minute(|minute| {
            for (tenant, n) in &delta.by_tenant {
                *minute.by_tenant.entry(*tenant).or_default() += n;
            }
            for (model, n) in &delta.by_model {
                *minute.by_model.entry(model.clone()).or_default() += n;
            }
        });
    }

    fn post(&self, f: impl FnOnce(&mut TokenDelta)) {
        if let Ok(mut outbox) = self.outbox.lock()
            && let Some(delta) = outbox.as_mut()
        {
            f(delta);
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
        });
    }
    // Just pushed when it was empty.
    let last = buckets.len() - 1;
    &mut buckets[last]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call of `input` + `output` tokens.
    fn call(
        tenant: TenantId,
        model: &str,
        task: Option<TaskId>,
        (input, output): (u64, u64),
    ) -> GatewayCall<'_> {
        GatewayCall {
            tenant,
            model,
            task,
            ok: Some(true),
            seconds: 0.5,
            tokens: input + output,
            input,
            output,
        }
    }

    #[test]
    fn an_agent_reporting_its_gateway_tokens_is_not_counted_twice() {
        let a = TenantId(uuid::Uuid::from_u128(1));
        let b = TenantId(uuid::Uuid::from_u128(2));
        let (t1, t2) = (
            TaskId(uuid::Uuid::from_u128(11)),
            TaskId(uuid::Uuid::from_u128(12)),
        );
        let recent = Recent::default();
        // Task 1's agent calls the gateway for 60 + 40 tokens, then reports 70 + 60 (10 + 20
        // from a model called directly); tenant a also calls with its own key for 50.
        recent.record_gateway_call(&call(a, "gpt-4o", Some(t1), (60, 40)));
        recent.record_gateway_call(&call(a, "gpt-4o", None, (50, 0)));
        assert_eq!(recent.unmetered(t1, 70, 60), (10, 20));
        assert_eq!(recent.unmetered(t1, 5, 5), (5, 5), "the credit is used up");
        // Task 2 made no gateway call: everything it reports counts.
        assert_eq!(recent.unmetered(t2, 30, 10), (30, 10));
        recent.record_tokens(a, 30 + 10);
        recent.record_tokens(b, 40);
        let by_tenant = recent.tokens_last_hour_by_tenant();
        assert_eq!(by_tenant.get(&a), Some(&190));
        assert_eq!(by_tenant.get(&b), Some(&40));
        assert_eq!(recent.tokens_last_hour(), 230);
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
                ..call(t, "m", None, (0, 0))
            });
        }
        let calls = recent.model_calls();
        let m = calls.get("m").cloned().unwrap_or_default();
        assert_eq!((m.ok, m.failed), (1, 1));
        assert_eq!(m.durations, [1.0, 3.0]);
        assert_eq!(m.success_rate(), Some(0.5));
        assert_eq!(ModelCalls::default().success_rate(), None);
    }

    #[test]
    fn followers_forward_their_tokens_to_the_leader() {
        let (a, b) = (
            TenantId(uuid::Uuid::from_u128(1)),
            TenantId(uuid::Uuid::from_u128(2)),
        );
        let (follower, leader) = (Recent::default(), Recent::default());
        follower.record_tokens(a, 5);
        assert!(follower.take_outbox().is_empty(), "nothing is kept alone");
        follower.keep_outbox();
        follower.record_tokens(a, 10);
        follower.record_gateway_call(&call(b, "m", None, (3, 4)));
        let delta = follower.take_outbox();
        assert_eq!(delta.by_tenant, HashMap::from([(a, 10), (b, 7)]));
        assert!(follower.take_outbox().is_empty(), "taken once");
        let chunks = delta.clone().chunks(1);
        assert_eq!(chunks.len(), 3, "one entry each");
        leader.record_tokens(a, 1);
        for chunk in &chunks {
            leader.absorb(chunk);
        }
        assert_eq!(
            leader.tokens_last_hour_by_tenant(),
            HashMap::from([(a, 11), (b, 7)])
        );
        assert_eq!(
            leader.tokens_last_hour_by_model(),
            HashMap::from([("m".to_owned(), 7)])
        );
    }
}
