//! Model usage and its cost (docs/design.md §3, §7): token counts normalised across providers, the
//! prices of a model, and the usage record every gateway call writes.
//!
//! Normal form: `input_tokens` counts every prompt token, of which `cached_input_tokens` were
//! served from the provider's cache; `output_tokens` counts every generated token, of which
//! `reasoning_tokens` were reasoning. Each token is thus priced exactly once: at the cached price
//! or the input price, at the reasoning price or the output price.

use crate::Timestamp;
use crate::id::{TaskId, TenantId};
use crate::money::{Money, PricePerMillion};
use serde::{Deserialize, Serialize};

/// Tokens of one call, in normal form (see the module docs).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct TokenUsage {
    /// Every prompt token, cached ones included.
    pub input_tokens: u64,
    /// Of `input_tokens`, those read from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Every generated token, reasoning included.
    pub output_tokens: u64,
    /// Of `output_tokens`, reasoning tokens.
    pub reasoning_tokens: u64,
}

impl TokenUsage {
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Reads an OpenAI-style `usage` object: `prompt_tokens`, `completion_tokens`,
    /// `prompt_tokens_details.cached_tokens`, `completion_tokens_details.reasoning_tokens`. Also
    /// understands the `input_tokens`/`output_tokens` spelling (Responses API, Anthropic) and
    /// Anthropic's `cache_read_input_tokens`, which Anthropic does *not* include in its input
    /// count. `None` when the object has no token counts at all.
    pub fn from_openai(usage: &serde_json::Value) -> Option<TokenUsage> {
        let n = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_u64);
        let prompt = n(usage.get("prompt_tokens"));
        let completion = n(usage.get("completion_tokens"));
        let input = n(usage.get("input_tokens"));
        let output = n(usage.get("output_tokens"));
        if prompt.is_none() && completion.is_none() && input.is_none() && output.is_none() {
            return None;
        }
        let cached = n(usage.pointer("/prompt_tokens_details/cached_tokens"))
            .or_else(|| n(usage.pointer("/input_tokens_details/cached_tokens")));
        let anthropic_cache_read = n(usage.get("cache_read_input_tokens")).unwrap_or(0);
        let reasoning = n(usage.pointer("/completion_tokens_details/reasoning_tokens"))
            .or_else(|| n(usage.pointer("/output_tokens_details/reasoning_tokens")))
            .unwrap_or(0);
        let (input_tokens, cached_input_tokens) = match (prompt, cached) {
            (Some(p), c) => (p, c.unwrap_or(0)),
            // Anthropic counts cache reads beside `input_tokens`; fold them in so each token
            // is counted once.
            (None, Some(c)) => (input.unwrap_or(0), c),
            (None, None) => (
                input.unwrap_or(0).saturating_add(anthropic_cache_read),
                anthropic_cache_read,
            ),
        };
        let output_tokens = completion.or(output).unwrap_or(0);
        Some(TokenUsage {
            input_tokens,
            cached_input_tokens: cached_input_tokens.min(input_tokens),
            output_tokens,
            reasoning_tokens: reasoning.min(output_tokens),
        })
    }
}

/// The prices of one model, per million tokens. A price left out is unknown, and a cost that
/// needs it is unknown too (never silently zero).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Uncached prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<PricePerMillion>,
    /// Prompt tokens read from the cache; the input price when the provider does not bill
    /// them apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<PricePerMillion>,
    /// Generated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<PricePerMillion>,
    /// Reasoning tokens; the output price when the provider does not bill them apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<PricePerMillion>,
}

impl Prices {
    /// The exact cost of `usage`, or `None` when a price it needs is unknown.
    pub fn cost(&self, usage: &TokenUsage) -> Option<Money> {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let uncached = usage.input_tokens - cached;
        let reasoning = usage.reasoning_tokens.min(usage.output_tokens);
        let visible = usage.output_tokens - reasoning;
        let part = |price: Option<PricePerMillion>, tokens: u64| -> Option<Money> {
            if tokens == 0 {
                Some(Money::ZERO)
            } else {
                price.map(|p| p.cost(tokens))
            }
        };
        Some(
            part(self.input, uncached)?
                + part(self.cached_input.or(self.input), cached)?
                + part(self.output, visible)?
                + part(self.reasoning.or(self.output), reasoning)?,
        )
    }

    /// The most a call with `input_tokens` of prompt and at most `max_output_tokens` of output
    /// can cost (no cache discount assumed, every output token at the dearer of output and
    /// reasoning): what a budget reserves before the call. `None` when a price is unknown.
    pub fn ceiling(&self, input_tokens: u64, max_output_tokens: u64) -> Option<Money> {
        let output = match (self.output, self.reasoning) {
            (Some(o), Some(r)) => Some(o.max(r)),
            (o, None) => o,
            (None, Some(_)) => None,
        };
        let part = |price: Option<PricePerMillion>, tokens: u64| -> Option<Money> {
            if tokens == 0 {
                Some(Money::ZERO)
            } else {
                price.map(|p| p.cost(tokens))
            }
        };
        Some(part(self.input, input_tokens)? + part(output, max_output_tokens)?)
    }
}

/// How a gateway call ended.
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
    strum::EnumString,
)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum UsageStatus {
    /// The provider answered in full.
    Ok,
    /// The provider (or every fallback) failed; tokens are what was used before the failure.
    Error,
    /// The client went away mid-stream; tokens are what was streamed until then.
    Cancelled,
    /// Refused before reaching a provider (budget, rate limit); no tokens.
    Rejected,
}

impl UsageStatus {
    /// The snake_case name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The status named `text`.
    pub fn parse(text: &str) -> Option<UsageStatus> {
        text.parse().ok()
    }
}

/// One model call as the ledger keeps it (docs/design.md §3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageRecord {
    /// UUIDv7, so records sort by time.
    #[schema(value_type = String)]
    pub id: uuid::Uuid,
    #[schema(value_type = String, format = Uuid)]
    pub tenant_id: TenantId,
    /// The task, when the call was made with a per-task token.
    #[schema(value_type = Option<String>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    /// The key that made the call (the task's key for a per-task token).
    pub key_id: String,
    /// The agent type of the task, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// The model that served the call (after downgrade and fallback).
    pub model: String,
    /// The model the caller asked for, when it differs (`auto`, a downgrade, a fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_model: Option<String>,
    pub provider: String,
    #[serde(flatten)]
    pub tokens: TokenUsage,
    /// Exact cost; `None` when a price it needs is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Money>,
    /// True when the token counts were estimated (the provider did not report usage).
    pub estimated: bool,
    pub latency_ms: u64,
    pub status: UsageStatus,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// A page of `GET /v1/usage`, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsagePage {
    pub records: Vec<UsageRecord>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Usage summed per UTC day, model and agent type: what spending analysis reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DailyUsage {
    #[schema(value_type = String, format = Date)]
    pub day: chrono::NaiveDate,
    pub model: String,
    /// `None` for calls made outside a task (with an API key).
    pub agent_type: Option<String>,
    pub calls: u64,
    pub tokens: TokenUsage,
    /// Sum of the known costs.
    pub cost: Money,
    /// Calls whose cost is unknown (a price was missing), not included in `cost`.
    pub unknown_cost_calls: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn status_names_are_pinned() {
        crate::enum_names::assert_names(
            &[
                (UsageStatus::Ok, "ok"),
                (UsageStatus::Error, "error"),
                (UsageStatus::Cancelled, "cancelled"),
                (UsageStatus::Rejected, "rejected"),
            ],
            UsageStatus::as_str,
            UsageStatus::parse,
        );
    }

    fn price(s: &str) -> Option<PricePerMillion> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn openai_usage_is_normalised_with_cached_and_reasoning_tokens_inside_the_totals() {
        let u = TokenUsage::from_openai(&json!({
            "prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 800},
            "completion_tokens_details": {"reasoning_tokens": 300}
        }))
        .unwrap();
        assert_eq!(
            u,
            TokenUsage {
                input_tokens: 1000,
                cached_input_tokens: 800,
                output_tokens: 500,
                reasoning_tokens: 300
            }
        );
    }

    #[test]
    fn anthropic_cache_reads_are_added_to_the_input_once() {
        let u = TokenUsage::from_openai(&json!({
            "input_tokens": 200, "output_tokens": 50, "cache_read_input_tokens": 1000
        }))
        .unwrap();
        assert_eq!(u.input_tokens, 1200);
        assert_eq!(u.cached_input_tokens, 1000);
        assert_eq!(TokenUsage::from_openai(&json!({"foo": 1})), None);
    }

    #[test]
    fn each_token_is_priced_once_at_its_own_price() {
        // gpt-5-like prices: input 1.25, cached 0.125, output 10.
        let prices = Prices {
            input: price("1.25"),
            cached_input: price("0.125"),
            output: price("10"),
            reasoning: None,
        };
        let u = TokenUsage {
            input_tokens: 1_000_000,
            cached_input_tokens: 800_000,
            output_tokens: 100_000,
            reasoning_tokens: 60_000,
        };
        // 200k × 1.25 + 800k × 0.125 + 100k × 10 (reasoning at the output price) = 0.25 + 0.1 + 1.
        assert_eq!(prices.cost(&u).unwrap().to_string(), "1.35");
    }

    #[test]
    fn an_unknown_price_makes_the_cost_unknown_not_zero() {
        let prices = Prices {
            input: price("1"),
            ..Prices::default()
        };
        let u = TokenUsage {
            input_tokens: 10,
            output_tokens: 5,
            ..TokenUsage::default()
        };
        assert_eq!(prices.cost(&u), None);
        assert_eq!(prices.ceiling(10, 5), None);
        // No output tokens: the missing output price is not needed.
        let input_only = TokenUsage {
            input_tokens: 10,
            ..TokenUsage::default()
        };
        assert!(prices.cost(&input_only).is_some());
    }

    proptest! {
        #[test]
        fn the_ceiling_bounds_the_cost(
            input in 0_u64..1_000_000, cached in 0_u64..1_000_000,
            output in 0_u64..100_000, reasoning in 0_u64..100_000,
            pi in 0_i64..100_000_000, pc in 0_i64..100_000_000,
            po in 0_i64..100_000_000, pr in 0_i64..100_000_000,
        ) {
            let prices = Prices {
                input: Some(PricePerMillion::from_micro(pi)),
                cached_input: Some(PricePerMillion::from_micro(pc.min(pi))),
                output: Some(PricePerMillion::from_micro(po)),
                reasoning: Some(PricePerMillion::from_micro(pr)),
            };
            let u = TokenUsage {
                input_tokens: input,
                cached_input_tokens: cached.min(input),
                output_tokens: output,
                reasoning_tokens: reasoning.min(output),
            };
            prop_assert!(prices.cost(&u).unwrap() <= prices.ceiling(input, output).unwrap());
        }
    }
}
