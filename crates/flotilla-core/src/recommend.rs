//! Model recommendation (docs/design.md §7): which model suits a task profile, for
//! `POST /v1/cost/recommend` and `model: "auto"`. A pure function of the model table and the
//! request; it does not know which models are healthy, which is the gateway's business.
//!
//! # Score
//!
//! The three priorities are made into weights that sum to 1:
//! `w_q = q / (q + s + c)`, `w_s = s / (q + s + c)`, `w_c = c / (q + s + c)`, where `q` is
//! `quality_priority` (default 0.5), `s` is `speed_priority` (default 0.3) and `c` is
//! `cost_priority`, by default what remains of 1 after the other two (`max(0, 1 − q − s)`, so
//! 0.2 with the defaults). Each must be finite and ≥ 0, and at least one above 0.
//!
//! Each model then scores
//!
//! ```text
//! score = w_q · quality_fit + w_s · speed + w_c · cost_score
//! quality_fit = max(0, quality − max(0, complexity − quality))
//! cost_score  = 1 − (cost − min_cost) / (max_cost − min_cost)
//! ```
//!
//! `quality_fit` is the model's quality, less the amount by which it falls short of the task's
//! `complexity` (0 to 1, default 0.5): a model of quality 0.7 keeps 0.7 for a task of
//! complexity 0.5 but only 0.5 for one of complexity 0.9, since it will more often fail at it.
//! Quality above the complexity is not penalised: it is still worth having, and the cost weight
//! already pays for it. The shortfall counts twice (once as lower quality, once as the penalty)
//! and the result is never below 0, so every score stays within 0..=1.
//!
//! `cost` is the exact estimated cost of one call of `input_tokens` (default 1000) prompt and
//! `output_tokens` (default 500) output tokens at the model's list prices, with no cache
//! discount. `min_cost` and `max_cost` range over every model of the table whose cost is known
//! (budget-excluded ones included, so a model's score does not depend on the budget); when they
//! are equal every known-cost model scores 1. A model whose price is unknown scores 0 on cost
//! and carries a note; with a `budget_limit` it is excluded, as its cost cannot be held to it.
//!
//! A model whose estimated cost is above `budget_limit` is excluded: it is still listed, with
//! the reason, after every model that fits. Equal scores go to the cheaper model, then to the
//! name in byte order, so the answer is the same for the same table and request.

use crate::model::ModelSpec;
use crate::money::Money;
use crate::usage::TokenUsage;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Default task complexity.
pub const DEFAULT_COMPLEXITY: f64 = 0.5;
/// Default quality priority.
pub const DEFAULT_QUALITY_PRIORITY: f64 = 0.5;
/// Default speed priority.
pub const DEFAULT_SPEED_PRIORITY: f64 = 0.3;
/// Prompt tokens assumed for the cost estimate.
pub const DEFAULT_INPUT_TOKENS: u64 = 1000;
/// Output tokens assumed for the cost estimate.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 500;

/// A task profile to recommend a model for (the body of `POST /v1/cost/recommend`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendRequest {
    /// The kind of work (agent type), e.g. `code_generator`; informational, echoed in the
    /// reasoning.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    /// How demanding the task is, 0 to 1 (default 0.5). Models of lower quality are penalised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub complexity: Option<f64>,
    /// Relative weight of quality, ≥ 0 (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub quality_priority: Option<f64>,
    /// Relative weight of speed, ≥ 0 (default 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub speed_priority: Option<f64>,
    /// Relative weight of cost, ≥ 0 (default: what remains of 1 after quality and speed, 0.2
    /// with their defaults). The three weights are normalised to sum to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub cost_priority: Option<f64>,
    /// The most one call may cost (a decimal string); models whose estimated cost is above it
    /// are excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_limit: Option<Money>,
    /// Expected prompt tokens per call, for the cost estimate (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 100_000_000)]
    pub input_tokens: Option<u64>,
    /// Expected output tokens per call, for the cost estimate (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 100_000_000)]
    pub output_tokens: Option<u64>,
}

/// The recommended model, why, and how every other model ranked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recommendation {
    pub recommended_model: String,
    /// One sentence: the winner's score and figures, the weights, and what was excluded.
    pub reasoning: String,
    /// Every other model, best first; excluded models come last.
    pub alternatives: Vec<Candidate>,
}

/// One model as scored for a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Candidate {
    pub model: String,
    /// The weighted score, 0 to 1 (see the module docs).
    pub score: f64,
    /// The model's quality score from the table.
    pub quality: f64,
    /// The model's speed score from the table.
    pub speed: f64,
    /// Exact estimated cost of one call; absent when a price is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_cost: Option<Money>,
    /// Why the model cannot be recommended (over the budget limit); absent when it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded: Option<String>,
    /// A caveat that did not exclude the model (an unknown price, scored 0 on cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A request that cannot be answered.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RecommendError {
    /// A field is out of range; `field` is its name in the request.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Every model was excluded (or there are none).
    #[error("{reason}")]
    NoneFits { reason: String },
}

/// The validated request: weights normalised, defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Profile {
    complexity: f64,
    w_quality: f64,
    w_speed: f64,
    w_cost: f64,
    usage: TokenUsage,
    budget_limit: Option<Money>,
}

/// Recommends the best-scoring model that fits the budget limit, with every other model ranked
/// as alternatives.
pub fn recommend(
    models: &[ModelSpec],
    request: &RecommendRequest,
) -> Result<Recommendation, RecommendError> {
    let profile = Profile::from_request(request)?;
    let mut ranked = rank_profile(models, &profile);
    let Some(best) = ranked.first().filter(|c| c.excluded.is_none()).cloned() else {
        return Err(RecommendError::NoneFits {
            reason: none_fits_reason(&ranked, &profile),
        });
    };
    ranked.remove(0);
    let reasoning = reasoning(&best, &ranked, &profile, request.task_type.as_deref());
    Ok(Recommendation {
        recommended_model: best.model,
        reasoning,
        alternatives: ranked,
    })
}

/// Every model scored for `request`, best first: the models that fit by score descending, then
/// the excluded ones in the same order. `recommend` takes the first.
pub fn rank(
    models: &[ModelSpec],
    request: &RecommendRequest,
) -> Result<Vec<Candidate>, RecommendError> {
    Ok(rank_profile(models, &Profile::from_request(request)?))
}

impl Profile {
    fn from_request(r: &RecommendRequest) -> Result<Profile, RecommendError> {
        let complexity = r.complexity.unwrap_or(DEFAULT_COMPLEXITY);
        if !(0.0..=1.0).contains(&complexity) {
            return Err(invalid(
                "complexity",
                format!("complexity must be between 0 and 1, not {complexity}"),
            ));
        }
        let q = priority(
            "quality_priority",
            r.quality_priority,
            DEFAULT_QUALITY_PRIORITY,
        )?;
        let s = priority("speed_priority", r.speed_priority, DEFAULT_SPEED_PRIORITY)?;
        let c = priority("cost_priority", r.cost_priority, (1.0 - q - s).max(0.0))?;
        let sum = q + s + c;
        if sum <= 0.0 || !sum.is_finite() {
            return Err(invalid(
                "quality_priority",
                "quality_priority, speed_priority and cost_priority are all 0; at least one \
                 must be above 0"
                    .to_owned(),
            ));
        }
        if let Some(limit) = r.budget_limit
            && limit < Money::ZERO
        {
            return Err(invalid(
                "budget_limit",
                format!("budget_limit must not be negative, not {limit}"),
            ));
        }
        Ok(Profile {
            complexity,
            w_quality: q / sum,
            w_speed: s / sum,
            w_cost: c / sum,
            usage: TokenUsage {
                input_tokens: r.input_tokens.unwrap_or(DEFAULT_INPUT_TOKENS),
                output_tokens: r.output_tokens.unwrap_or(DEFAULT_OUTPUT_TOKENS),
                ..TokenUsage::default()
            },
            budget_limit: r.budget_limit,
        })
    }
}

fn invalid(field: &'static str, message: String) -> RecommendError {
    RecommendError::Invalid { field, message }
}

fn priority(field: &'static str, value: Option<f64>, default: f64) -> Result<f64, RecommendError> {
    let v = value.unwrap_or(default);
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(invalid(
            field,
            format!("{field} must be a finite number ≥ 0, not {v}"),
        ))
    }
}

/// A table score clamped into 0..=1 (a NaN counts as 0), so a misconfigured model cannot
/// dominate.
fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

fn rank_profile(models: &[ModelSpec], p: &Profile) -> Vec<Candidate> {
    let costs: Vec<Option<Money>> = models.iter().map(|m| m.prices.cost(&p.usage)).collect();
    let min = costs.iter().flatten().min().copied();
    let max = costs.iter().flatten().max().copied();
    let mut ranked: Vec<Candidate> = models
        .iter()
        .zip(&costs)
        .map(|(m, &cost)| {
            let quality = unit(m.quality);
            let speed = unit(m.speed);
            let quality_fit = (quality - (p.complexity - quality).max(0.0)).max(0.0);
            let cost_score = match (cost, min, max) {
                (Some(c), Some(lo), Some(hi)) if hi > lo => 1.0 - (c - lo).ratio(hi - lo),
                (Some(_), _, _) => 1.0,
                (None, _, _) => 0.0,
            };
            let score = p.w_quality * quality_fit + p.w_speed * speed + p.w_cost * cost_score;
            let excluded = match (p.budget_limit, cost) {
                (Some(limit), Some(c)) if c > limit => Some(format!(
                    "estimated cost ${c} per call is over the ${limit} budget limit"
                )),
                (Some(limit), None) => Some(format!(
                    "price unknown, so its cost cannot be held to the ${limit} budget limit"
                )),
                _ => None,
            };
            let note = cost
                .is_none()
                .then(|| "price unknown: scored 0 on cost".to_owned());
            Candidate {
                model: m.name.clone(),
                score,
                quality: m.quality,
                speed: m.speed,
                estimated_cost: cost,
                excluded,
                note,
            }
        })
        .collect();
    ranked.sort_by(order);
    ranked
}

/// Fitting models first, then by score descending, cost ascending (unknown last), name.
fn order(a: &Candidate, b: &Candidate) -> Ordering {
    let cost_key = |c: &Candidate| (c.estimated_cost.is_none(), c.estimated_cost);
    a.excluded
        .is_some()
        .cmp(&b.excluded.is_some())
        .then_with(|| b.score.total_cmp(&a.score))
        .then_with(|| cost_key(a).cmp(&cost_key(b)))
        .then_with(|| a.model.cmp(&b.model))
}

fn reasoning(best: &Candidate, rest: &[Candidate], p: &Profile, task_type: Option<&str>) -> String {
    let task = match task_type {
        Some(t) => format!(" for a {t} task of complexity {:.2}", p.complexity),
        None => format!(" for a task of complexity {:.2}", p.complexity),
    };
    let cost = match best.estimated_cost {
        Some(c) => format!("est. ${c} per call"),
        None => "price unknown".to_owned(),
    };
    let mut text = format!(
        "{}: best score {:.2}{task} (quality {:.2}, speed {:.2}, {cost}) with weights quality \
         {:.2}, speed {:.2}, cost {:.2}",
        best.model, best.score, best.quality, best.speed, p.w_quality, p.w_speed, p.w_cost
    );
    if best.quality < p.complexity {
        text.push_str("; note that its quality is below the task's complexity");
    }
    let over = rest
        .iter()
        .filter(|c| c.excluded.is_some() && c.estimated_cost.is_some())
        .count();
    let unpriced = rest
        .iter()
        .filter(|c| c.excluded.is_some() && c.estimated_cost.is_none())
        .count();
    if let Some(limit) = p.budget_limit
        && over > 0
    {
        text.push_str(&format!(
            "; {} over the ${limit} budget limit {} excluded",
            models(over),
            were(over)
        ));
    }
    if unpriced > 0 {
        text.push_str(&format!(
            "; {} of unknown price {} excluded",
            models(unpriced),
            were(unpriced)
        ));
    }
    text.push('.');
    text
}

fn models(n: usize) -> String {
    if n == 1 {
        "1 model".to_owned()
    } else {
        format!("{n} models")
    }
}

fn were(n: usize) -> &'static str {
    if n == 1 { "was" } else { "were" }
}

fn none_fits_reason(ranked: &[Candidate], p: &Profile) -> String {
    let Some(limit) = p.budget_limit.filter(|_| !ranked.is_empty()) else {
        return "no models are configured".to_owned();
    };
    let cheapest = ranked
        .iter()
        .filter_map(|c| c.estimated_cost.map(|cost| (cost, &c.model)))
        .min();
    match cheapest {
        Some((cost, model)) => format!(
            "every model is over the ${limit} budget limit; the cheapest, {model}, is estimated \
             at ${cost} per call"
        ),
        None => format!("no model has a known price to hold to the ${limit} budget limit"),
    }
}

#[cfg(test)]
mod tests;
