//! The models the gateway serves (docs/design.md §7): each model's provider, upstream name, prices,
//! quality and speed scores, fallbacks and cheaper downgrade, and the shipped default table.

use crate::money::{Money, PricePerMillion};
use crate::usage::Prices;
use serde::Serialize;

/// The provider every shipped default model uses: Flotilla's built-in simulated provider, so
/// that the gateway works out of the box. Its answers say they are simulated. Configure a real
/// provider and re-declare a model (`[[models]]` with the same name) to call it for real.
pub const SIMULATED_PROVIDER: &str = "simulated";

/// What a failed upstream attempt looked like, to decide whether to fall back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamFailure {
    /// The provider answered with this HTTP status.
    Status(u16),
    /// No answer in time (connect, first token or total).
    Timeout,
    /// The connection failed or broke.
    Connection,
}

/// One model as the gateway serves it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelSpec {
    /// The name callers use in `model`.
    pub name: String,
    /// The `[providers.NAME]` that serves it (or `simulated`).
    pub provider: String,
    /// The model's name at the provider.
    pub upstream: String,
    pub prices: Prices,
    /// Quality score, 0 to 1 (higher is better), for recommendation and `model: "auto"`.
    pub quality: f64,
    /// Speed score, 0 to 1 (higher is faster).
    pub speed: f64,
    /// Models tried in order when this one fails with a status in `fallback_on`, a timeout or
    /// a connection error (after its retries).
    pub fallbacks: Vec<String>,
    /// HTTP statuses of the upstream that lead to a retry and then a fallback.
    pub fallback_on: Vec<u16>,
    /// The cheaper model a `downgrade` budget switches to once the budget is spent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downgrade_to: Option<String>,
    /// Output tokens assumed (for budget reservation and tokens-per-minute limits) when a
    /// request does not set `max_tokens`/`max_completion_tokens`.
    pub default_max_output_tokens: u64,
    /// Marked free by an admin: a price it lacks counts as $0, so tenants with a budget may
    /// call it. Without the mark, a model lacking a price is refused to them.
    pub free: bool,
}

/// The most a call can cost on `spec` or on any of its fallbacks (looked up in `models`; the
/// gateway may serve the call with any of them), with at most `input_tokens` of prompt and
/// `max_output_tokens` of output: what a budget reserves. `Err` names the first model of the
/// chain whose price is unknown and that is not marked `free`.
pub fn chain_ceiling(
    spec: &ModelSpec,
    models: &[ModelSpec],
    input_tokens: u64,
    max_output_tokens: u64,
) -> Result<Money, String> {
    let fallbacks = spec
        .fallbacks
        .iter()
        .filter_map(|name| models.iter().find(|m| &m.name == name));
    let mut worst = Money::ZERO;
    for model in std::iter::once(spec).chain(fallbacks) {
        match model.prices.ceiling(input_tokens, max_output_tokens) {
            Some(ceiling) => worst = worst.max(ceiling),
            None if model.free => {}
            None => return Err(model.name.clone()),
        }
    }
    Ok(worst)
}

impl ModelSpec {
    /// True when a failure of this model should be retried and then fall back.
    pub fn falls_back_on(&self, failure: UpstreamFailure) -> bool {
        match failure {
            UpstreamFailure::Status(s) => self.fallback_on.contains(&s),
            UpstreamFailure::Timeout | UpstreamFailure::Connection => true,
        }
    }
}

/// Statuses that are retried and fall back by default: rate limited and the provider's own
/// faults.
pub const DEFAULT_FALLBACK_ON: [u16; 6] = [408, 429, 500, 502, 503, 504];

/// Output tokens assumed when a request sets no maximum.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;

fn price(micro: i64) -> Option<PricePerMillion> {
    Some(PricePerMillion::from_micro(micro))
}

/// The shipped table: the five classic models with their list prices (USD per million tokens,
/// as published by their vendors in 2025) and quality/speed scores. All are served by the
/// `simulated` provider until the configuration says otherwise.
pub fn default_models() -> Vec<ModelSpec> {
    let spec = |name: &str,
                input: i64,
                cached: i64,
                output: i64,
                quality: f64,
                speed: f64,
                fallbacks: &[&str],
                downgrade_to: Option<&str>| ModelSpec {
        name: name.to_owned(),
        provider: SIMULATED_PROVIDER.to_owned(),
        upstream: name.to_owned(),
        prices: Prices {
            input: price(input),
            cached_input: price(cached),
            output: price(output),
            reasoning: None,
        },
        quality,
        speed,
        fallbacks: fallbacks.iter().map(|s| (*s).to_owned()).collect(),
        fallback_on: DEFAULT_FALLBACK_ON.to_vec(),
        downgrade_to: downgrade_to.map(str::to_owned),
        default_max_output_tokens: DEFAULT_MAX_OUTPUT_TOKENS,
        free: false,
    };
    vec![
        spec(
            "gpt-5",
            1_250_000,
            125_000,
            10_000_000,
            0.95,
            0.60,
            &["gpt-4o"],
            Some("gpt-4o"),
        ),
        spec(
            "gpt-4o",
            2_500_000,
            1_250_000,
            10_000_000,
            0.85,
            0.80,
            &["gemini-2.0-flash"],
            Some("gemini-2.0-flash"),
        ),
        spec(
            "claude-opus-4.1",
            15_000_000,
            1_500_000,
            75_000_000,
            0.95,
            0.50,
            &["claude-sonnet-3.5"],
            Some("claude-sonnet-3.5"),
        ),
        spec(
            "claude-sonnet-3.5",
            3_000_000,
            300_000,
            15_000_000,
            0.85,
            0.75,
            &["gemini-2.0-flash"],
            Some("gemini-2.0-flash"),
        ),
        spec(
            "gemini-2.0-flash",
            100_000,
            25_000,
            400_000,
            0.70,
            0.95,
            &[],
            None,
        ),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod chain_tests {
    use super::*;

    fn model(name: &str, input: Option<i64>, output: Option<i64>, fallbacks: &[&str]) -> ModelSpec {
        let mut m = default_models().remove(0);
        m.name = name.to_owned();
        m.prices = Prices {
            input: input.and_then(price),
            cached_input: None,
            output: output.and_then(price),
            reasoning: None,
        };
        m.fallbacks = fallbacks.iter().map(|s| (*s).to_owned()).collect();
        m
    }

    #[test]
    fn the_dearest_model_of_the_chain_sets_the_ceiling() {
        let cheap = model("cheap", Some(1), Some(2), &["dear"]);
        let dear = model("dear", Some(4), Some(8), &[]);
        let models = [cheap.clone(), dear.clone()];
        let ceiling = chain_ceiling(&cheap, &models, 1_000, 100).unwrap();
        assert_eq!(ceiling, dear.prices.ceiling(1_000, 100).unwrap());
        assert!(ceiling > cheap.prices.ceiling(1_000, 100).unwrap());
        // A fallback not configured cannot serve the call.
        let lone = model("lone", Some(1), Some(2), &["missing"]);
        assert_eq!(
            chain_ceiling(&lone, &models, 1_000, 100),
            Ok(lone.prices.ceiling(1_000, 100).unwrap())
        );
    }

    #[test]
    fn an_unpriced_model_or_fallback_is_named_unless_free() {
        let unpriced = model("unpriced", None, None, &[]);
        let priced = model("priced", Some(1), Some(2), &["unpriced"]);
        let models = [unpriced.clone(), priced.clone()];
        assert_eq!(
            chain_ceiling(&unpriced, &models, 10, 10),
            Err("unpriced".to_owned())
        );
        assert_eq!(
            chain_ceiling(&priced, &models, 10, 10),
            Err("unpriced".to_owned())
        );
        let free = ModelSpec {
            free: true,
            ..unpriced
        };
        let models = [free.clone(), priced.clone()];
        assert_eq!(chain_ceiling(&free, &models, 10, 10), Ok(Money::ZERO));
        assert_eq!(
            chain_ceiling(&priced, &models, 10, 10),
            Ok(priced.prices.ceiling(10, 10).unwrap())
        );
    }
}
