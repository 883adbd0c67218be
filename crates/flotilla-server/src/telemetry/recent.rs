//! Short rolling windows the alert engine reads: `/execute` durations per agent type (for p95
//! over the last five minutes) and model tokens per minute (for the last hour). Bounded: at most
//! `MAX_SAMPLES` durations per type, one bucket per minute for tokens.

use flotilla_core::id::TenantId;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Window of the response-time percentile.
pub const RESPONSE_WINDOW: Duration = Duration::from_secs(300);
const TOKEN_WINDOW: Duration = Duration::from_secs(3600);
const MAX_SAMPLES: usize = 10_000;

/// The windows.
#[derive(Default)]
pub struct Recent {
    responses: Mutex<HashMap<String, VecDeque<(Instant, f64)>>>,
    /// (start of the minute, tokens in it per tenant).
    tokens: Mutex<VecDeque<(Instant, HashMap<TenantId, u64>)>>,
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

    /// Records model tokens reported by an agent for a task of `tenant`.
    pub fn record_tokens(&self, tenant: TenantId, tokens: u64) {
        let Ok(mut buckets) = self.tokens.lock() else {
            return;
        };
        match buckets.back_mut() {
            Some((start, per_tenant)) if start.elapsed() < Duration::from_secs(60) => {
                *per_tenant.entry(tenant).or_default() += tokens;
            }
            _ => buckets.push_back((Instant::now(), HashMap::from([(tenant, tokens)]))),
        }
    }

    /// Tokens reported over the last hour, per tenant.
    pub fn tokens_last_hour_by_tenant(&self) -> HashMap<TenantId, u64> {
        let Ok(mut buckets) = self.tokens.lock() else {
            return HashMap::new();
        };
        while buckets
            .front()
            .is_some_and(|(at, _)| at.elapsed() > TOKEN_WINDOW)
        {
            buckets.pop_front();
        }
        let mut totals = HashMap::new();
        for (tenant, n) in buckets.iter().flat_map(|(_, per_tenant)| per_tenant) {
            *totals.entry(*tenant).or_default() += n;
        }
        totals
    }

    /// Tokens reported over the last hour.
    pub fn tokens_last_hour(&self) -> u64 {
        self.tokens_last_hour_by_tenant().values().sum()
    }
}
