//! `flotilla events list`.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table};

/// `flotilla events …`.
#[derive(clap::Subcommand, Debug)]
pub enum EventsCommand {
    /// List fleet events (instance status changes, scaling decisions, provisioner actions).
    List {
        #[command(flatten)]
        connection: Connection,
        /// Only this pool.
        #[arg(long = "type", value_name = "TYPE")]
        agent_type: Option<String>,
        /// Only events of this kind: `instance`, `scale`, `provisioner`, `alert`, `budget` or
        /// `leader`.
        #[arg(long)]
        kind: Option<String>,
        /// Only events after this id (oldest first); default: the latest.
        #[arg(long)]
        after: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Runs `flotilla events …`.
pub async fn run(command: EventsCommand) -> anyhow::Result<()> {
    let EventsCommand::List {
        connection,
        agent_type,
        kind,
        after,
        limit,
        output,
    } = command;
    let mut query = vec![("limit", limit.to_string())];
    query.extend(agent_type.map(|t| ("agent_type", t)));
    query.extend(kind.map(|k| ("kind", k)));
    query.extend(after.map(|a| ("after", a.to_string())));
    let list = connection.client()?.list_events(&query).await?;
    if output == Output::Json {
        return print_json(&list);
    }
    let mut t = table(["ID", "TIME", "KIND", "POOL", "EVENT"]);
    for e in &list.events {
        t.add_row([
            e.id.to_string(),
            e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            e.kind.to_string(),
            e.agent_type.clone(),
            e.message.clone(),
        ]);
    }
    println!("{t}");
    Ok(())
}
