//! `flotilla budgets …`: the model gateway's budgets.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table};
use flotilla_core::budget::{BudgetRequest, BudgetStatus, Enforcement, Period};
use flotilla_core::money::Money;

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

/// Runs `flotilla budgets …`.
pub async fn run(command: BudgetsCommand) -> anyhow::Result<()> {
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

fn parse_period(text: &str) -> Result<Period, String> {
    Period::parse(text).ok_or_else(|| format!("`{text}` is not a period; use daily or monthly"))
}

fn parse_enforcement(text: &str) -> Result<Enforcement, String> {
    Enforcement::parse(text).ok_or_else(|| {
        format!("`{text}` is not an enforcement; use block, downgrade or alert_only")
    })
}
