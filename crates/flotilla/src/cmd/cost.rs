//! `flotilla cost …`: the model gateway's spending report and model recommendation.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table};
use flotilla_core::analysis::{Analysis, Share, render_chart};
use flotilla_core::money::Money;
use flotilla_core::recommend::RecommendRequest;

/// `flotilla cost …`.
#[derive(clap::Subcommand, Debug)]
pub enum CostCommand {
    /// The tenant's spending: total, burn rate, month-end projection, budget use, breakdowns by
    /// model and agent type, suggestions, and a chart of the daily spend.
    Report {
        #[command(flatten)]
        connection: Connection,
        /// Days analysed, ending today (UTC), 1-366.
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[arg(long)]
        tenant: Option<String>,
        /// Width of the chart's bars, in characters.
        #[arg(long, default_value_t = 40)]
        width: usize,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// The model that best suits a task profile, and how the others rank.
    Recommend {
        #[command(flatten)]
        connection: Connection,
        /// The kind of work (agent type), for the reasoning.
        #[arg(long = "type")]
        task_type: Option<String>,
        /// How demanding the task is, 0 to 1 (default 0.5).
        #[arg(long)]
        complexity: Option<f64>,
        /// Weight of quality, ≥ 0 (default 0.5).
        #[arg(long)]
        quality_priority: Option<f64>,
        /// Weight of speed, ≥ 0 (default 0.3).
        #[arg(long)]
        speed_priority: Option<f64>,
        /// Weight of cost, ≥ 0 (default: what remains of 1).
        #[arg(long)]
        cost_priority: Option<f64>,
        /// The most one call may cost in dollars, e.g. `0.01`.
        #[arg(long)]
        budget_limit: Option<Money>,
        /// Expected prompt tokens per call (default 1000).
        #[arg(long)]
        input_tokens: Option<u64>,
        /// Expected output tokens per call (default 500).
        #[arg(long)]
        output_tokens: Option<u64>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Runs `flotilla cost …`.
pub async fn run(command: CostCommand) -> anyhow::Result<()> {
    match command {
        CostCommand::Report {
            connection,
            days,
            tenant,
            width,
            output,
        } => {
            let analysis = connection
                .client()?
                .cost_analysis(Some(days), tenant.as_deref())
                .await?;
            if output == Output::Json {
                return print_json(&analysis);
            }
            print_report(&analysis, width);
            Ok(())
        }
        CostCommand::Recommend {
            connection,
            task_type,
            complexity,
            quality_priority,
            speed_priority,
            cost_priority,
            budget_limit,
            input_tokens,
            output_tokens,
            output,
        } => {
            let request = RecommendRequest {
                task_type,
                complexity,
                quality_priority,
                speed_priority,
                cost_priority,
                budget_limit,
                input_tokens,
                output_tokens,
            };
            let answer = connection.client()?.recommend_model(&request).await?;
            if output == Output::Json {
                return print_json(&answer);
            }
            println!("{}", answer.recommended_model);
            println!("{}", answer.reasoning);
            if !answer.alternatives.is_empty() {
                let mut t = table(["MODEL", "SCORE", "QUALITY", "SPEED", "EST. COST", "NOTE"]);
                for c in &answer.alternatives {
                    t.add_row([
                        c.model.clone(),
                        format!("{:.3}", c.score),
                        format!("{:.2}", c.quality),
                        format!("{:.2}", c.speed),
                        c.estimated_cost
                            .map_or_else(|| "unknown".into(), |m| format!("${m}")),
                        c.excluded
                            .clone()
                            .or_else(|| c.note.clone())
                            .unwrap_or_default(),
                    ]);
                }
                println!("\nAlternatives:\n{t}");
            }
            Ok(())
        }
    }
}

fn print_report(a: &Analysis, width: usize) {
    println!("Spending from {} to {} ({} days)", a.from, a.to, a.days);
    println!("Total:           ${}", a.total.for_people());
    if a.unknown_cost_calls > 0 {
        println!(
            "                 (not counting {} calls of models with unknown prices)",
            a.unknown_cost_calls
        );
    }
    println!(
        "Burn rate:       ${} a day this month",
        a.burn_rate_per_day.for_people()
    );
    println!(
        "Month-end:       ${} projected",
        a.projected_month_end.for_people()
    );
    match &a.budget {
        Some(b) => println!(
            "Monthly budget:  ${} of ${} used ({:.1} %), {:.1} % projected",
            b.used.for_people(),
            b.limit.for_people(),
            b.utilisation * 100.0,
            b.projected_utilisation * 100.0
        ),
        None => println!("Monthly budget:  none"),
    }
    let sign = if a.trend.slope_per_day < Money::ZERO {
        "-"
    } else {
        "+"
    };
    println!(
        "Trend:           {} over {} days ({sign}${} a day, mean ${} a day)",
        match a.trend.direction {
            flotilla_core::analysis::TrendDirection::Rising => "rising",
            flotilla_core::analysis::TrendDirection::Falling => "falling",
            flotilla_core::analysis::TrendDirection::Flat => "flat",
        },
        a.trend.days,
        (abs(a.trend.slope_per_day)).for_people(),
        a.trend.mean_per_day.for_people()
    );
    print_shares("By model", "MODEL", &a.by_model);
    print_shares("By agent type", "AGENT TYPE", &a.by_agent_type);
    if !a.suggestions.is_empty() {
        println!("\nSuggestions:");
        for s in &a.suggestions {
            match s.estimated_monthly_savings {
                Some(saving) => println!(
                    "- {} (saves about ${} a month)",
                    s.message,
                    saving.for_people()
                ),
                None => println!("- {}", s.message),
            }
        }
    }
    println!("\nDaily spend:");
    print!("{}", render_chart(&a.daily, width));
}

fn print_shares(title: &str, name: &str, shares: &[Share]) {
    if shares.is_empty() {
        return;
    }
    let mut t = table([name, "COST", "CALLS", "SHARE"]);
    for s in shares {
        t.add_row([
            s.name.clone(),
            format!("${}", s.cost),
            s.calls.to_string(),
            format!("{:.1} %", s.share * 100.0),
        ]);
    }
    println!("\n{title}:\n{t}");
}

fn abs(m: Money) -> Money {
    Money::from_pico(m.pico().saturating_abs())
}
