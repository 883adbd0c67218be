//! Spending analysis (docs/design.md §7), for `GET /v1/cost/analysis` and `flotilla cost report`: the
//! daily spend of a window of days, its breakdown by model and agent type, the weekly trend,
//! the month's burn rate and projection, the use of the monthly budget, and suggestions. A pure
//! function of the daily usage rows the store sums up and of `today`, which the shell passes in.
//!
//! Every amount is exact: sums are integer pico-dollars, and the trend's least-squares slope is
//! computed in `i128` with the denominators multiplied through, then rounded toward zero once.
//! Floats appear only as shares and utilisations, for display.

use crate::model::ModelSpec;
use crate::money::Money;
use crate::usage::DailyUsage;
use chrono::{Datelike, Days, NaiveDate};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The longest window analysed (ten years); a longer one is clamped to it.
pub const MAX_DAYS: u32 = 3660;
/// Days of the trend: the last week of the window.
pub const TREND_DAYS: u32 = 7;
/// The agent type reported for calls made outside a task (with an API key). Agent type names
/// are lower-case letters, digits, `_` and `-`, so this cannot collide with one.
pub const NO_AGENT_TYPE: &str = "(none)";
/// Share of the window's spend above which a model is called dominant, in percent.
pub const DOMINANT_PERCENT: i128 = 40;
/// Use of the monthly budget above which a suggestion says so, in percent.
pub const BUDGET_HIGH_PERCENT: i128 = 80;
/// The widest bar `render_chart` draws, whatever it is asked for.
pub const MAX_CHART_WIDTH: usize = 1000;

/// A tenant's spending over a window of days.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Analysis {
    /// Days in the window (the request's, clamped into 1..=3660).
    pub days: u32,
    /// First day of the window, `to − days + 1`.
    #[schema(value_type = String, format = Date)]
    pub from: NaiveDate,
    /// Last day of the window: today (UTC).
    #[schema(value_type = String, format = Date)]
    pub to: NaiveDate,
    /// Known spend over the window.
    pub total: Money,
    /// Every day of the window, oldest first, days without calls included as zeros.
    pub daily: Vec<DaySpend>,
    /// Spend per model, dearest first.
    pub by_model: Vec<Share>,
    /// Spend per agent type, dearest first; calls outside a task count as `(none)`.
    pub by_agent_type: Vec<Share>,
    pub trend: Trend,
    /// This month's spend so far divided by the days of the month elapsed, today included.
    pub burn_rate_per_day: Money,
    /// This month's spend at the current burn rate on the last day of the month.
    pub projected_month_end: Money,
    /// Use of the monthly budget, when the tenant has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetUse>,
    pub suggestions: Vec<Suggestion>,
    /// Calls in the window whose price was unknown: their cost is in none of the amounts.
    pub unknown_cost_calls: u64,
}

/// One day's spend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DaySpend {
    #[schema(value_type = String, format = Date)]
    pub day: NaiveDate,
    pub cost: Money,
    pub calls: u64,
    /// Prompt and output tokens.
    pub tokens: u64,
}

/// One model's or agent type's part of the spend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Share {
    pub name: String,
    pub cost: Money,
    pub calls: u64,
    /// Fraction of the window's total, 0 to 1 (0 when nothing was spent).
    pub share: f64,
}

/// The least-squares trend of the daily spend over the last 7 days of the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Trend {
    /// Days the trend covers: 7, or the whole window when it is shorter.
    pub days: u32,
    /// Change of the daily spend per day, rounded toward zero.
    pub slope_per_day: Money,
    /// Mean daily spend over those days, rounded toward zero.
    pub mean_per_day: Money,
    pub direction: TrendDirection,
}

/// Which way the daily spend goes: `flat` when the slope is under 1 % of the mean daily spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrendDirection {
    Rising,
    Falling,
    Flat,
}

/// This month's spend against the monthly budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetUse {
    pub limit: Money,
    /// Spend so far this month.
    pub used: Money,
    /// `used / limit` (0 when the limit is 0).
    pub utilisation: f64,
    /// `projected_month_end / limit`.
    pub projected_utilisation: f64,
}

/// Something worth doing about the spend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Suggestion {
    /// What it is about: `budget_high`, `projected_over_budget`, `rising_trend`,
    /// `dominant_model` or `unknown_prices`.
    pub kind: String,
    /// One or two short sentences with the amounts.
    pub message: String,
    /// What following it would save in a month, where that can be estimated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_monthly_savings: Option<Money>,
}

/// Analyses the `days` days up to `today` (inclusive) of `daily` (rows outside the window are
/// ignored). `models` is the model table, for the cheaper model a dominant one could give work
/// to (its `downgrade_to`); `month_to_date` is the tenant's spend this calendar month, which the
/// burn rate, projection and budget use whatever the window.
pub fn analyse(
    daily: &[DailyUsage],
    models: &[ModelSpec],
    monthly_budget: Option<Money>,
    month_to_date: Money,
    today: NaiveDate,
    days: u32,
) -> Analysis {
    let days = days.clamp(1, MAX_DAYS);
    let from = today
        .checked_sub_days(Days::new(u64::from(days - 1)))
        .unwrap_or(NaiveDate::MIN);
    let mut series: Vec<DaySpend> = from
        .iter_days()
        .take_while(|d| *d <= today)
        .map(|day| DaySpend {
            day,
            cost: Money::ZERO,
            calls: 0,
            tokens: 0,
        })
        .collect();
    let days = u32::try_from(series.len()).unwrap_or(days);
    let mut by_model: BTreeMap<&str, (Money, u64, u64)> = BTreeMap::new();
    let mut by_agent_type: BTreeMap<&str, (Money, u64, u64)> = BTreeMap::new();
    let mut unknown_cost_calls = 0_u64;
    for row in daily {
        let offset = row.day.signed_duration_since(from).num_days();
        let Some(slot) = usize::try_from(offset).ok().and_then(|i| series.get_mut(i)) else {
            continue;
        };
        slot.cost += row.cost;
        slot.calls = slot.calls.saturating_add(row.calls);
        slot.tokens = slot.tokens.saturating_add(row.tokens.total());
        unknown_cost_calls = unknown_cost_calls.saturating_add(row.unknown_cost_calls);
        let agent_type = row.agent_type.as_deref().unwrap_or(NO_AGENT_TYPE);
        for (map, key) in [
            (&mut by_model, row.model.as_str()),
            (&mut by_agent_type, agent_type),
        ] {
            let e = map.entry(key).or_default();
            e.0 += row.cost;
            e.1 = e.1.saturating_add(row.calls);
            e.2 = e.2.saturating_add(row.unknown_cost_calls);
        }
    }
    let total: Money = series.iter().map(|d| d.cost).sum();
    let trend = trend(&series);
    let (burn_rate_per_day, projected_month_end) = month_projection(month_to_date, today);
    let budget = monthly_budget.map(|limit| BudgetUse {
        limit,
        used: month_to_date,
        utilisation: month_to_date.ratio(limit),
        projected_utilisation: projected_month_end.ratio(limit),
    });

    let mut suggestions = Vec::new();
    if let Some(b) = &budget {
        budget_suggestions(b, burn_rate_per_day, projected_month_end, &mut suggestions);
    }
    if trend.direction == TrendDirection::Rising {
        suggestions.push(Suggestion {
            kind: "rising_trend".to_owned(),
            message: format!(
                "Daily spend rose by about ${} a day over the last {} days (mean ${} a day).",
                trend.slope_per_day.for_people(),
                trend.days,
                trend.mean_per_day.for_people()
            ),
            estimated_monthly_savings: None,
        });
    }
    let model_shares = shares(&by_model, total);
    for share in &model_shares {
        if let Some(s) = dominant_model(share, models, total, days) {
            suggestions.push(s);
        }
    }
    for (model, &(_, _, unknown)) in by_model.iter().filter(|(_, v)| v.2 > 0) {
        let calls = if unknown == 1 { "call" } else { "calls" };
        suggestions.push(Suggestion {
            kind: "unknown_prices".to_owned(),
            message: format!(
                "{unknown} {calls} to {model} had no known price, so their cost is missing \
                 from these figures. Set the model's prices."
            ),
            estimated_monthly_savings: None,
        });
    }

    Analysis {
        days,
        from,
        to: today,
        total,
        daily: series,
        by_model: model_shares,
        by_agent_type: shares(&by_agent_type, total),
        trend,
        burn_rate_per_day,
        projected_month_end,
        budget,
        suggestions,
        unknown_cost_calls,
    }
}

/// Shares of `total`, dearest first, then by name.
fn shares(sums: &BTreeMap<&str, (Money, u64, u64)>, total: Money) -> Vec<Share> {
    let mut v: Vec<Share> = sums
        .iter()
        .map(|(name, &(cost, calls, _))| Share {
            name: (*name).to_owned(),
            cost,
            calls,
            share: cost.ratio(total),
        })
        .collect();
    // The map is ordered by name and the sort is stable, so equal costs stay in name order.
    v.sort_by_key(|s| std::cmp::Reverse(s.cost));
    v
}

/// The least-squares slope of the last `TREND_DAYS` days, with x = 0, 1, … and y in
/// pico-dollars: `slope = (n·Σxy − Σx·Σy) / (n·Σx² − (Σx)²)`, which is
/// `Σ(x−x̄)(y−ȳ) / Σ(x−x̄)²` multiplied through by `n`, so that only the final division rounds.
fn trend(series: &[DaySpend]) -> Trend {
    let tail = &series[series.len().saturating_sub(TREND_DAYS as usize)..];
    let n = i128::try_from(tail.len()).unwrap_or(0);
    let (mut sx, mut sy, mut sxy, mut sxx) = (0_i128, 0_i128, 0_i128, 0_i128);
    for (x, d) in (0_i128..).zip(tail) {
        let y = i128::from(d.cost.pico());
        sx += x;
        sy += y;
        sxy += x * y;
        sxx += x * x;
    }
    let num = n * sxy - sx * sy;
    let den = n * sxx - sx * sx;
    let slope = if den == 0 { 0 } else { num / den };
    let mean = if n == 0 { 0 } else { sy / n };
    // |slope| < 1 % of the mean  ⇔  |num/den| · 100 < Σy / n  ⇔  |num| · 100 · n < Σy · den.
    let direction = if num == 0 || den == 0 || num.abs() * 100 * n < sy * den {
        TrendDirection::Flat
    } else if num > 0 {
        TrendDirection::Rising
    } else {
        TrendDirection::Falling
    };
    Trend {
        days: u32::try_from(tail.len()).unwrap_or(TREND_DAYS),
        slope_per_day: pico(slope),
        mean_per_day: pico(mean),
        direction,
    }
}

fn pico(v: i128) -> Money {
    Money::from_pico(i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX }))
}

/// The burn rate (`month_to_date / elapsed`) and the month-end projection. The projection is
/// `month_to_date + burn × remaining`, computed as `month_to_date × days_in_month / elapsed` so
/// that it rounds once rather than carrying the burn rate's rounding through the multiplication.
fn month_projection(month_to_date: Money, today: NaiveDate) -> (Money, Money) {
    let elapsed = i64::from(today.day());
    let in_month = i64::from(days_in_month(today));
    (
        month_to_date.scale(1, elapsed),
        month_to_date.scale(in_month, elapsed),
    )
}

fn days_in_month(day: NaiveDate) -> u32 {
    let (y, m) = if day.month() == 12 {
        (day.year() + 1, 1)
    } else {
        (day.year(), day.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|next| next.pred_opt())
        .map_or(31, |last| last.day())
}

fn budget_suggestions(b: &BudgetUse, burn: Money, projected: Money, out: &mut Vec<Suggestion>) {
    let (used, limit) = (i128::from(b.used.pico()), i128::from(b.limit.pico()));
    if used * 100 > limit * BUDGET_HIGH_PERCENT {
        out.push(Suggestion {
            kind: "budget_high".to_owned(),
            message: format!(
                "This month's spend of ${} is {} of the ${} monthly budget.",
                b.used.for_people(),
                percent(b.utilisation, b.limit),
                b.limit.for_people()
            ),
            estimated_monthly_savings: None,
        });
    }
    if projected > b.limit {
        out.push(Suggestion {
            kind: "projected_over_budget".to_owned(),
            message: format!(
                "At ${} a day, this month's spend will reach about ${} by its end, ${} over the \
                 ${} monthly budget.",
                burn.for_people(),
                projected.for_people(),
                (projected - b.limit).for_people(),
                b.limit.for_people()
            ),
            estimated_monthly_savings: None,
        });
    }
}

fn percent(ratio: f64, limit: Money) -> String {
    if limit.is_zero() {
        "all".to_owned()
    } else {
        format!("{:.0}%", ratio * 100.0)
    }
}

/// A model with more than 40 % of the spend whose `downgrade_to` model has a lower output price:
/// moving its work there would save `spend × 30/days × (1 − cheaper_output / own_output)` a month.
fn dominant_model(
    share: &Share,
    models: &[ModelSpec],
    total: Money,
    days: u32,
) -> Option<Suggestion> {
    let cost = i128::from(share.cost.pico());
    if total <= Money::ZERO || cost * 100 <= i128::from(total.pico()) * DOMINANT_PERCENT {
        return None;
    }
    let spec = models.iter().find(|m| m.name == share.name)?;
    let cheaper_name = spec.downgrade_to.as_deref()?;
    let cheaper = models.iter().find(|m| m.name == cheaper_name)?;
    let own = spec.prices.output?.micro();
    let theirs = cheaper.prices.output?.micro();
    if theirs >= own {
        return None;
    }
    let savings = share
        .cost
        .scale(30, i64::from(days))
        .scale(own - theirs, own);
    if savings <= Money::ZERO {
        return None;
    }
    Some(Suggestion {
        kind: "dominant_model".to_owned(),
        message: format!(
            "{} took {:.0}% of the spend over the last {days} days (${} of ${}). Moving routine \
             work to {cheaper_name} could save about ${} a month.",
            share.name,
            share.share * 100.0,
            share.cost.for_people(),
            total.for_people(),
            savings.for_people()
        ),
        estimated_monthly_savings: Some(savings),
    })
}

/// A terminal bar chart for `flotilla cost report`: one line per day with the date, a bar of
/// `█` up to `width` long scaled to the dearest day (a day with any spend gets at least one),
/// and the amount. `width` is clamped to `MAX_CHART_WIDTH`.
pub fn render_chart(daily: &[DaySpend], width: usize) -> String {
    let width = width.min(MAX_CHART_WIDTH);
    let max = daily.iter().map(|d| d.cost).max().unwrap_or(Money::ZERO);
    let amounts: Vec<String> = daily
        .iter()
        .map(|d| format!("${}", d.cost.for_people()))
        .collect();
    let amount_width = amounts.iter().map(String::len).max().unwrap_or(0);
    let mut out = String::new();
    for (d, amount) in daily.iter().zip(&amounts) {
        let len = if max > Money::ZERO && d.cost > Money::ZERO {
            let w = i128::try_from(width).unwrap_or(i128::MAX);
            let scaled = (i128::from(d.cost.pico()) * w + i128::from(max.pico()) / 2)
                / i128::from(max.pico());
            usize::try_from(scaled)
                .unwrap_or(width)
                .clamp(1.min(width), width)
        } else {
            0
        };
        let bar = "█".repeat(len);
        out.push_str(&format!(
            "{} {bar}{} {amount:>amount_width$}\n",
            d.day,
            " ".repeat(width - len)
        ));
    }
    out
}

#[cfg(test)]
mod tests;
