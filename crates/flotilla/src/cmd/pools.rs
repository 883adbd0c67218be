//! `flotilla pools list`.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table};

/// `flotilla pools …`.
#[derive(clap::Subcommand, Debug)]
pub enum PoolsCommand {
    /// List pools with their provisioner, strategy, size, load, queue and last scaling decision.
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Runs `flotilla pools …`.
pub async fn run(command: PoolsCommand) -> anyhow::Result<()> {
    let PoolsCommand::List { connection, output } = command;
    let list = connection.client()?.list_pools().await?;
    if output == Output::Json {
        return print_json(&list);
    }
    let mut t = table([
        "POOL",
        "PROVISIONER",
        "STRATEGY",
        "SIZE (MIN-MAX)",
        "INSTANCES",
        "LOAD",
        "QUEUED",
        "LAST DECISION",
    ]);
    for p in &list.pools {
        let instances: Vec<String> = p
            .instances
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        t.add_row([
            p.name.clone(),
            p.provisioner.clone(),
            p.strategy.to_string(),
            format!("{} ({}-{})", p.desired, p.min_instances, p.max_instances),
            instances.join(", "),
            format!("{}/{} ({:.0}%)", p.load, p.capacity, p.utilisation * 100.0),
            p.queued.to_string(),
            p.last_decision.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(())
}
