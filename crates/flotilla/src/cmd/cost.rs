//! `flotilla budgets …`, `flotilla usage …` and `flotilla cost …`: the model gateway's budgets,
//! usage ledger, spending report and model recommendation.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table};
use flotilla_client::ListUsage;
use flotilla_core::analysis::{Analysis, Share, render_chart};
use flotilla_core::budget::{BudgetRequest, BudgetStatus, Enforcement, Period};
use flotilla_core::money::Money;
use flotilla_core::recommend::RecommendRequest;
use std::io::Write;

/// `flotilla budgets …`.
#[derive(clap::Subcommand, Debug)]
pub enum BudgetsCommand {
    /// The tenant's budgets with the spend of their current windows.
    List {
        #[command(flatten)]
        connection: Connection,
        /// Another tenant's budgets (admin keys only).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Set (or replace) the tenant's daily or monthly budget (admin keys only).
    Set {
        #[command(flatten)]
        connection: Connection,
        /// `daily` or `monthly` (calendar windows, UTC).
        #[arg(value_parser = parse_period)]
        period: Period,
        /// The limit in dollars, e.g. `250` or `12.50`.
        limit: Money,
        /// Percentages of the limit at which alerts fire, e.g. `50,80,90,100` (default: the
        /// server's `gateway.default_thresholds`).
        #[arg(long, value_delimiter = ',')]
        thresholds: Option<Vec<u32>>,
        /// What happens once the budget is spent: `block` (default), `downgrade` or `alert_only`.
        #[arg(long, value_parser = parse_enforcement)]
        enforcement: Option<Enforcement>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Remove the tenant's budget for a period (admin keys only).
    Delete {
        #[command(flatten)]
        connection: Connection,
        #[arg(value_parser = parse_period)]
        period: Period,
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// `flotilla usage …`.
#[derive(clap::Subcommand, Debug)]
pub enum UsageCommand {
    /// Model calls of the tenant, newest first.
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        tenant: Option<String>,
        /// Only calls served by this model.
        #[arg(long)]
        model: Option<String>,
        /// Only calls of tasks of this agent type.
        #[arg(long)]
        agent_type: Option<String>,
        /// Only calls of this task.
        #[arg(long)]
        task: Option<String>,
        /// Only calls at or after this time (RFC 3339 or a date).
        #[arg(long)]
        since: Option<String>,
        /// Only calls before this time (RFC 3339 or a date).
        #[arg(long)]
        until: Option<String>,
        /// The cursor printed after the previous page.
        #[arg(long)]
        before: Option<String>,
        /// At most this many calls, 1-10000.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print CSV (header row, exact amounts) instead of a table.
        #[arg(long, conflicts_with = "output")]
        csv: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

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

pub async fn run_budgets(command: BudgetsCommand) -> anyhow::Result<()> {
    match command {
        BudgetsCommand::List {
            connection,
            tenant,
            output,
        } => {
            let list = connection.client()?.list_budgets(tenant.as_deref()).await?;
            if output == Output::Json {
                return print_json(&list);
            }
            if list.budgets.is_empty() {
                println!("No budgets: model calls of this tenant are not limited.");
                return Ok(());
            }
            print_budgets(&list.budgets);
            Ok(())
        }
        BudgetsCommand::Set {
            connection,
            period,
            limit,
            thresholds,
            enforcement,
            tenant,
            output,
        } => {
            let request = BudgetRequest {
                limit,
                thresholds,
                enforcement,
            };
            let status = connection
                .client()?
                .set_budget(period, &request, tenant.as_deref())
                .await?;
            if output == Output::Json {
                return print_json(&status);
            }
            print_budgets(std::slice::from_ref(&status));
            Ok(())
        }
        BudgetsCommand::Delete {
            connection,
            period,
            tenant,
        } => {
            connection
                .client()?
                .delete_budget(period, tenant.as_deref())
                .await?;
            println!("Removed the {} budget.", period.as_str());
            Ok(())
        }
    }
}

fn print_budgets(budgets: &[BudgetStatus]) {
    let mut t = table([
        "PERIOD",
        "LIMIT",
        "SPENT",
        "IN FLIGHT",
        "USED",
        "ENFORCEMENT",
        "THRESHOLDS",
        "RESETS",
    ]);
    for b in budgets {
        t.add_row([
            b.budget.period.as_str().to_owned(),
            format!("${}", b.budget.limit),
            format!("${}", b.spent),
            format!("${}", b.reserved),
            format!("{:.1} %", b.utilisation * 100.0),
            b.budget.enforcement.as_str().to_owned(),
            b.budget
                .thresholds
                .iter()
                .map(|t| format!("{t}%"))
                .collect::<Vec<_>>()
                .join(","),
            b.resets_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        ]);
    }
    println!("{t}");
}

pub async fn run_usage(command: UsageCommand) -> anyhow::Result<()> {
    let UsageCommand::List {
        connection,
        tenant,
        model,
        agent_type,
        task,
        since,
        until,
        before,
        limit,
        csv,
        output,
    } = command;
    let filter = ListUsage {
        tenant,
        model,
        agent_type,
        task_id: task,
        since,
        until,
        before,
        limit: Some(limit),
    };
    let client = connection.client()?;
    if csv {
        let export = client.usage_csv(&filter).await?;
        std::io::stdout().write_all(export.text.as_bytes())?;
        if let Some(next) = export.next {
            eprintln!("More calls: add --before {next}");
        }
        return Ok(());
    }
    let page = client.list_usage(&filter).await?;
    if output == Output::Json {
        return print_json(&page);
    }
    let mut t = table([
        "TIME",
        "MODEL",
        "AGENT TYPE",
        "TASK",
        "INPUT",
        "OUTPUT",
        "COST",
        "LATENCY",
        "STATUS",
    ]);
    for r in &page.records {
        t.add_row([
            r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            match &r.requested_model {
                Some(asked) => format!("{} (asked {asked})", r.model),
                None => r.model.clone(),
            },
            r.agent_type.clone().unwrap_or_else(|| "-".into()),
            r.task_id.map_or_else(|| "-".into(), |t| t.to_string()),
            r.tokens.input_tokens.to_string(),
            r.tokens.output_tokens.to_string(),
            r.cost.map_or_else(|| "unknown".into(), |c| format!("${c}")),
            format!("{} ms", r.latency_ms),
            r.status.as_str().to_owned(),
        ]);
    }
    println!("{t}");
    if let Some(next) = page.next {
        eprintln!("More calls: add --before {next}");
    }
    Ok(())
}

pub async fn run_cost(command: CostCommand) -> anyhow::Result<()> {
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

fn parse_period(text: &str) -> Result<Period, String> {
    Period::parse(text).ok_or_else(|| format!("`{text}` is not a period; use daily or monthly"))
}

fn parse_enforcement(text: &str) -> Result<Enforcement, String> {
    Enforcement::parse(text).ok_or_else(|| {
        format!("`{text}` is not an enforcement; use block, downgrade or alert_only")
    })
}
