//! `flotilla agents list`.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table};

/// `flotilla agents …`.
#[derive(clap::Subcommand, Debug)]
pub enum AgentsCommand {
    /// List registered instances with their status and load.
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Runs the command.
pub async fn run(command: AgentsCommand) -> anyhow::Result<()> {
    match command {
        AgentsCommand::List { connection, output } => {
            let list = connection.client()?.list_agents().await?;
            if output == Output::Json {
                return print_json(&list);
            }
            let mut t = table([
                "ID",
                "TYPE",
                "OWNER",
                "STATUS",
                "LOAD",
                "LATENCY",
                "SUCCESS",
                "URL",
                "LAST HEARTBEAT",
            ]);
            for a in &list.agents {
                t.add_row([
                    a.id.to_string(),
                    a.agent_type.clone(),
                    a.tenant_id
                        .map_or_else(|| "platform".to_owned(), |t| t.to_string()),
                    a.status.to_string(),
                    format!("{}/{}", a.load, a.capacity),
                    a.latency_ms
                        .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0} ms")),
                    a.success_rate
                        .map_or_else(|| "-".to_owned(), |r| format!("{:.0}%", r * 100.0)),
                    // Platform addresses are shown to admins only.
                    if a.url.is_empty() {
                        "-".to_owned()
                    } else {
                        a.url.clone()
                    },
                    a.last_heartbeat.format("%H:%M:%S").to_string(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
    }
}
