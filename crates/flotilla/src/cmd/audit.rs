//! `flotilla audit …`: read, verify and export the tamper-evident audit log.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table, time};
use anyhow::Context;
use flotilla_core::audit::{AuditEntry, verify};
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// `flotilla audit …`.
#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Audit entries, oldest first.
    List {
        #[command(flatten)]
        connection: Connection,
        /// Entries after this sequence number.
        #[arg(long)]
        after: Option<i64>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only this action, e.g. `auth.failure`.
        #[arg(long)]
        action: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Check the hash chain of the whole log (from the server, or from an export) and report the
    /// first broken link. Exits non-zero when the chain is broken.
    Verify {
        #[command(flatten)]
        connection: Connection,
        /// Verify an export (`flotilla audit export`) instead of the server's log.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Write the whole log as JSON lines.
    Export {
        #[command(flatten)]
        connection: Connection,
        /// Where to write; default: standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs `flotilla audit …`.
pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::List {
            connection,
            after,
            limit,
            action,
            output,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(after.map(|a| ("after", a.to_string())));
            query.extend(action.map(|a| ("action", a)));
            let page = connection.client()?.list_audit(&query).await?;
            if output == Output::Json {
                return print_json(&page);
            }
            let mut t = table([
                "SEQ", "AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "SOURCE",
            ]);
            for e in &page.entries {
                t.add_row([
                    e.seq.to_string(),
                    time(Some(e.at)),
                    e.actor.clone().unwrap_or_else(|| "-".into()),
                    e.action.clone(),
                    e.target.clone(),
                    e.outcome.clone(),
                    e.source.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        AuditCommand::Verify { connection, file } => {
            let entries = match file {
                Some(path) => read_export(&path)?,
                None => fetch_all(&connection).await?,
            };
            match verify(&entries, None) {
                Ok(n) => {
                    let head = entries.last().map_or("-", |e| e.hash.as_str());
                    println!("Audit log intact: {n} entries, head {head}.");
                    Ok(())
                }
                Err(broken) => anyhow::bail!("audit log broken: {broken}"),
            }
        }
        AuditCommand::Export { connection, out } => {
            let entries = fetch_all(&connection).await?;
            let mut writer: Box<dyn Write> = match &out {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            for entry in &entries {
                serde_json::to_writer(&mut writer, entry)?;
                writer.write_all(b"\n")?;
            }
            writer.flush()?;
            if let Some(path) = out {
                eprintln!("Wrote {} entries to {}.", entries.len(), path.display());
            }
            Ok(())
        }
    }
}

/// Every entry of the server's log, page by page.
async fn fetch_all(connection: &Connection) -> anyhow::Result<Vec<AuditEntry>> {
    let client = connection.client()?;
    let mut entries = Vec::new();
    let mut after = None;
    loop {
        let mut query = vec![("limit", "1000".to_owned())];
        query.extend(after.map(|a: i64| ("after", a.to_string())));
        let page = client.list_audit(&query).await?;
        entries.extend(page.entries);
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(entries),
        }
    }
}

fn read_export(path: &PathBuf) -> anyhow::Result<Vec<AuditEntry>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut entries = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        entries.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{} line {}", path.display(), n + 1))?,
        );
    }
    Ok(entries)
}
