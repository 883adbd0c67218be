//! `flotilla usage …`: the model gateway's usage ledger.

use crate::cmd::Connection;
use crate::output::{OutputWithCsv, print_json, table};
use flotilla_client::ListUsage;
use std::io::Write;

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
        /// `csv` prints the server's CSV export (header row, exact amounts).
        #[arg(long, value_enum, default_value_t)]
        output: OutputWithCsv,
        /// The older spelling of `--output csv`.
        #[arg(long, hide = true, conflicts_with = "output")]
        csv: bool,
    },
}

/// Runs `flotilla usage …`.
pub async fn run(command: UsageCommand) -> anyhow::Result<()> {
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
        output,
        csv,
    } = command;
    let output = if csv { OutputWithCsv::Csv } else { output };
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
    if output == OutputWithCsv::Csv {
        let export = client.usage_csv(&filter).await?;
        std::io::stdout().write_all(export.text.as_bytes())?;
        if let Some(next) = export.next {
            eprintln!("More calls: add --before {next}");
        }
        return Ok(());
    }
    let page = client.list_usage(&filter).await?;
    if output == OutputWithCsv::Json {
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
