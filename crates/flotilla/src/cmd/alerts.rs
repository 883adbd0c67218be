//! `flotilla alerts list` and `flotilla alerts history`.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table};

/// `flotilla alerts …`.
#[derive(clap::Subcommand, Debug)]
pub enum AlertsCommand {
    /// Pending and firing alerts with their values and since when.
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Alert transitions and failed notifications, oldest first.
    History {
        #[command(flatten)]
        connection: Connection,
        /// Only entries after this id; default: the latest.
        #[arg(long)]
        after: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Runs the command.
pub async fn run(command: AlertsCommand) -> anyhow::Result<()> {
    match command {
        AlertsCommand::List { connection, output } => {
            let list = connection.client()?.list_alerts().await?;
            if output == Output::Json {
                return print_json(&list);
            }
            let mut t = table([
                "RULE",
                "TYPE",
                "STATE",
                "SEVERITY",
                "VALUE",
                "THRESHOLD",
                "SINCE",
            ]);
            for a in &list.alerts {
                t.add_row([
                    a.rule.clone(),
                    a.agent_type.clone().unwrap_or_else(|| "*".to_owned()),
                    a.state.clone(),
                    a.severity.as_str().to_owned(),
                    format!("{} = {:.3}", a.signal.as_str(), a.value),
                    format!("{} {}", a.comparison, a.threshold),
                    a.since.format("%Y-%m-%d %H:%M:%S").to_string(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        AlertsCommand::History {
            connection,
            after,
            limit,
            output,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(after.map(|a| ("after", a.to_string())));
            let list = connection.client()?.alert_history(&query).await?;
            if output == Output::Json {
                return print_json(&list);
            }
            let mut t = table(["ID", "TIME", "ALERT"]);
            for e in &list.events {
                t.add_row([
                    e.id.to_string(),
                    e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    e.message.clone(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
    }
}
