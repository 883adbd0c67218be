#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
use crate::model::default_models;
use crate::usage::TokenUsage;

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

/// 2026-11-24: November has 30 days, 6 of them after today.
fn today() -> NaiveDate {
    date(2026, 11, 24)
}

fn usd_str(text: &str) -> Money {
    text.parse().unwrap()
}

fn row(
    day: NaiveDate,
    model: &str,
    agent_type: Option<&str>,
    cost: &str,
    calls: u64,
) -> DailyUsage {
    DailyUsage {
        day,
        model: model.to_owned(),
        agent_type: agent_type.map(str::to_owned),
        calls,
        tokens: TokenUsage {
            input_tokens: 100 * calls,
            output_tokens: 10 * calls,
            ..TokenUsage::default()
        },
        cost: usd_str(cost),
        unknown_cost_calls: 0,
    }
}

/// The last `costs.len()` days up to today, one row each.
fn series(model: &str, costs: &[&str]) -> Vec<DailyUsage> {
    let n = costs.len() as u64;
    costs
        .iter()
        .enumerate()
        .map(|(i, c)| row(today() - Days::new(n - 1 - i as u64), model, None, c, 1))
        .collect()
}

fn run(rows: &[DailyUsage], days: u32) -> Analysis {
    analyse(rows, &default_models(), None, Money::ZERO, today(), days)
}

fn kinds(a: &Analysis) -> Vec<&str> {
    a.suggestions.iter().map(|s| s.kind.as_str()).collect()
}

#[test]
fn every_day_of_the_window_is_listed_with_zeros_filled_in() {
    let rows = [
        row(date(2026, 11, 20), "gpt-4o", None, "1.5", 3),
        row(date(2026, 11, 20), "gpt-5", Some("coder"), "0.5", 1),
        row(date(2026, 11, 24), "gpt-4o", None, "2", 2),
        // Outside the window on both sides: ignored.
        row(date(2026, 11, 17), "gpt-4o", None, "100", 1),
        row(date(2026, 11, 25), "gpt-4o", None, "100", 1),
    ];
    let a = run(&rows, 7);
    assert_eq!((a.from, a.to, a.days), (date(2026, 11, 18), today(), 7));
    let days: Vec<NaiveDate> = a.daily.iter().map(|d| d.day).collect();
    assert_eq!(
        days,
        date(2026, 11, 18).iter_days().take(7).collect::<Vec<_>>()
    );
    let costs: Vec<String> = a.daily.iter().map(|d| d.cost.to_string()).collect();
    assert_eq!(costs, ["0", "0", "2", "0", "0", "0", "2"]);
    assert_eq!(a.daily[2].calls, 4);
    assert_eq!(a.daily[2].tokens, 440);
    assert_eq!(a.total, Money::from_usd(4));
    // A window of 0 days is taken as 1.
    assert_eq!(run(&rows, 0).daily.len(), 1);
}

#[test]
fn breakdown_shares_sum_to_one_dearest_first() {
    let d = today();
    let rows = [
        row(d, "gpt-4o", Some("coder"), "3", 3),
        row(d, "gpt-5", Some("reviewer"), "1.5", 1),
        row(d, "gemini-2.0-flash", None, "0.5", 5),
        row(d, "gpt-4o", None, "0.5", 1),
    ];
    let a = run(&rows, 30);
    let names = |v: &[Share]| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a.by_model), ["gpt-4o", "gpt-5", "gemini-2.0-flash"]);
    assert_eq!(names(&a.by_agent_type), ["coder", "reviewer", "(none)"]);
    assert_eq!(a.by_model[0].calls, 4);
    for v in [&a.by_model, &a.by_agent_type] {
        let sum: f64 = v.iter().map(|s| s.share).sum();
        assert!((sum - 1.0).abs() < 1e-9);
        assert_eq!(v.iter().map(|s| s.cost).sum::<Money>(), a.total);
    }
    assert!(run(&[], 30).by_model.is_empty());
}

#[test]
fn the_slope_of_a_linear_series_is_exact() {
    let a = run(&series("gpt-5", &["1", "2", "3", "4", "5", "6", "7"]), 30);
    assert_eq!(a.trend.slope_per_day, Money::from_usd(1));
    assert_eq!(a.trend.mean_per_day, Money::from_usd(4));
    assert_eq!(a.trend.direction, TrendDirection::Rising);
    assert_eq!(a.trend.days, 7);

    let a = run(
        &series("gpt-5", &["100", "7", "6", "5", "4", "3", "2", "1"]),
        30,
    );
    assert_eq!(a.trend.slope_per_day, usd_str("0") - Money::from_usd(1));
    assert_eq!(a.trend.direction, TrendDirection::Falling);

    // 0.000000000001 on the last day only: 21/196 pico-dollars a day, rounded toward zero.
    let a = run(
        &series("gpt-5", &["0", "0", "0", "0", "0", "0", "0.000000000001"]),
        7,
    );
    assert_eq!(a.trend.slope_per_day, Money::ZERO);
}

#[test]
fn a_steady_series_is_flat() {
    assert_eq!(run(&[], 30).trend.direction, TrendDirection::Flat);
    let a = run(&series("gpt-5", &["5"; 7]), 30);
    assert_eq!(
        (a.trend.slope_per_day, a.trend.direction),
        (Money::ZERO, TrendDirection::Flat)
    );
    // A slope of $0.0098 a day is under 1 % of a $5 mean.
    let a = run(
        &series(
            "gpt-5",
            &[
                "4.9706", "4.9804", "4.9902", "5", "5.0098", "5.0196", "5.0294",
            ],
        ),
        30,
    );
    assert_eq!(a.trend.slope_per_day, usd_str("0.0098"));
    assert_eq!(a.trend.direction, TrendDirection::Flat);
    // A window shorter than a week: the trend covers the whole window.
    let a = run(&series("gpt-5", &["1", "2", "3"]), 3);
    assert_eq!(
        (a.trend.days, a.trend.slope_per_day),
        (3, Money::from_usd(1))
    );
}

#[test]
fn burn_rate_and_projection_follow_the_calendar_month() {
    let a = analyse(&[], &[], None, Money::from_usd(24), today(), 30);
    assert_eq!(a.burn_rate_per_day, Money::from_usd(1));
    assert_eq!(a.projected_month_end, Money::from_usd(30));
    // Leap February, and the last day of a month projects what was spent.
    let a = analyse(&[], &[], None, Money::from_usd(10), date(2028, 2, 10), 30);
    assert_eq!(a.projected_month_end, Money::from_usd(29));
    let a = analyse(&[], &[], None, Money::from_usd(31), date(2026, 12, 31), 30);
    assert_eq!(
        (a.burn_rate_per_day, a.projected_month_end),
        (Money::from_usd(1), Money::from_usd(31))
    );
}

#[test]
fn budget_suggestions_trigger_past_80_percent_and_on_a_projected_overshoot() {
    let budget = Some(Money::from_usd(100));
    let last_day = date(2026, 11, 30);
    let at = |used: i64, day: NaiveDate| analyse(&[], &[], budget, Money::from_usd(used), day, 30);

    let a = at(85, last_day);
    assert_eq!(kinds(&a), ["budget_high"]);
    assert_eq!(
        a.suggestions[0].message,
        "This month's spend of $85.00 is 85% of the $100.00 monthly budget."
    );
    let b = a.budget.unwrap();
    assert!((b.utilisation - 0.85).abs() < 1e-12);
    assert!((b.projected_utilisation - 0.85).abs() < 1e-12);

    assert!(kinds(&at(80, last_day)).is_empty());

    let a = at(60, date(2026, 11, 15));
    assert_eq!(kinds(&a), ["projected_over_budget"]);
    assert_eq!(
        a.suggestions[0].message,
        "At $4.00 a day, this month's spend will reach about $120.00 by its end, $20.00 over the \
         $100.00 monthly budget."
    );
    assert!(kinds(&at(50, date(2026, 11, 15))).is_empty());
    assert!(
        analyse(&[], &[], None, Money::from_usd(1000), today(), 30)
            .budget
            .is_none()
    );
}

#[test]
fn a_rising_trend_is_suggested_and_a_flat_one_is_not() {
    let a = run(&series("gpt-5", &["1", "2", "3", "4", "5", "6", "7"]), 30);
    assert!(kinds(&a).contains(&"rising_trend"));
    let s = a
        .suggestions
        .iter()
        .find(|s| s.kind == "rising_trend")
        .unwrap();
    assert_eq!(
        s.message,
        "Daily spend rose by about $1.00 a day over the last 7 days (mean $4.00 a day)."
    );
    assert!(!kinds(&run(&series("gpt-5", &["5"; 7]), 30)).contains(&"rising_trend"));
}

#[test]
fn a_dominant_model_is_pointed_to_its_cheaper_downgrade() {
    // Ten days ago, so that the last week is flat and no trend is suggested.
    let d = today() - Days::new(10);
    let rows = [
        row(d, "gpt-4o", None, "9", 9),
        row(d, "gpt-5", None, "1", 1),
    ];
    let a = run(&rows, 30);
    assert_eq!(kinds(&a), ["dominant_model"]);
    // $9 over 30 days at $10 per million output tokens, against $0.40 for gemini-2.0-flash.
    assert_eq!(
        a.suggestions[0].estimated_monthly_savings,
        Some(usd_str("8.64"))
    );
    assert_eq!(
        a.suggestions[0].message,
        "gpt-4o took 90% of the spend over the last 30 days ($9.00 of $10.00). Moving routine \
         work to gemini-2.0-flash could save about $8.64 a month."
    );
    // Over 15 days the same spend is twice as much a month.
    let a = run(&rows, 15);
    assert_eq!(
        a.suggestions[0].estimated_monthly_savings,
        Some(usd_str("17.28"))
    );

    // Exactly 40 % is not dominant.
    let even = [
        row(d, "gpt-4o", None, "4", 1),
        row(d, "gpt-5", None, "6", 1),
    ];
    assert!(kinds(&run(&even[..1], 30)).contains(&"dominant_model"));
    let a = run(&even, 30);
    // gpt-5 has 60 %, but its downgrade gpt-4o costs as much per output token.
    assert!(kinds(&a).is_empty(), "{:?}", a.suggestions);
    // The cheapest model has no downgrade; a model unknown to the table has none either.
    assert!(kinds(&run(&[row(d, "gemini-2.0-flash", None, "9", 1)], 30)).is_empty());
    assert!(kinds(&run(&[row(d, "my-model", None, "9", 1)], 30)).is_empty());
}

#[test]
fn calls_of_unknown_price_are_counted_and_suggested() {
    let d = today() - Days::new(10);
    let mut r = row(d, "my-model", None, "0", 4);
    r.unknown_cost_calls = 3;
    let a = run(&[r, row(d, "gpt-5", None, "1", 1)], 30);
    assert_eq!(a.unknown_cost_calls, 3);
    assert_eq!(kinds(&a), ["unknown_prices"]);
    assert!(
        a.suggestions[0]
            .message
            .starts_with("3 calls to my-model had no known price")
    );
    assert!(kinds(&run(&[row(d, "gpt-5", None, "1", 1)], 30)).is_empty());
}

#[test]
fn the_chart_has_one_aligned_line_per_day() {
    let a = run(&series("gpt-5", &["4", "0", "1", "0.001"]), 4);
    let chart = render_chart(&a.daily, 8);
    let lines: Vec<&str> = chart.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], "2026-11-21 ████████  $4.00");
    assert_eq!(lines[1], "2026-11-22           $0.00");
    assert_eq!(lines[2], "2026-11-23 ██        $1.00");
    // A day with any spend shows at least one block.
    assert_eq!(lines[3], "2026-11-24 █        $0.001");
    assert_eq!(render_chart(&[], 10), "");
}

#[test]
fn the_analysis_serialises_with_decimal_amounts() {
    let a = run(&series("gpt-5", &["1", "2", "3", "4", "5", "6", "7"]), 7);
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(json["total"], "28");
    assert_eq!(json["trend"]["direction"], "rising");
    assert_eq!(json["from"], "2026-11-18");
    assert_eq!(serde_json::from_value::<Analysis>(json).unwrap(), a);
}
