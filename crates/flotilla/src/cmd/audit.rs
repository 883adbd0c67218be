//! `flotilla audit …`: read, verify and export the tamper-evident audit log.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table, time};
use anyhow::Context;
use flotilla_core::audit::{AuditEntry, MacKey, Start, verify};
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
    /// Check the MAC chain of the whole log — every entry from entry 1 (or from the recorded
    /// prune before the first one left) — and report the first broken link; print the head as
    /// `SEQ:HASH`, an anchor to record. Exits non-zero when the chain is broken. The server checks
    /// its own log with its master keys; an export (`--file`) is checked here, with the master
    /// keys of FLOTILLA_MASTER_KEY / FLOTILLA_PREVIOUS_MASTER_KEYS or `--master-key-file`.
    Verify {
        #[command(flatten)]
        connection: Connection,
        /// Verify an export (`flotilla audit export`) instead of the server's log.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Check from this anchor (`SEQ:HASH`, a head printed earlier): the log must still hold
        /// that entry, so deleting newer entries is found.
        #[arg(long, value_name = "SEQ:HASH")]
        since: Option<String>,
        /// The master key file (as `[vault] master_key_file`) to check an export with.
        #[arg(long, value_name = "PATH")]
        master_key_file: Option<PathBuf>,
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
        AuditCommand::Verify {
            connection,
            file,
            since,
            master_key_file,
        } => {
            let start: Start = match since.as_deref() {
                Some(anchor) => anchor.parse().map_err(anyhow::Error::msg)?,
                None => Start::Beginning,
            };
            let Some(path) = file else {
                let found = connection.client()?.verify_audit(since.as_deref()).await?;
                let head = found.head.as_deref().unwrap_or("-");
                return match found.problem {
                    None => {
                        println!("Audit log intact: {} entries, head {head}.", found.checked);
                        Ok(())
                    }
                    Some(problem) => anyhow::bail!("audit log broken: {problem}"),
                };
            };
            let entries = read_export(&path)?;
            let keys = master_keys(master_key_file.as_deref())?;
            let find = |id: &str| keys.iter().find(|k| k.id == id).cloned();
            match verify(&entries, &start, &find) {
                Ok(n) => {
                    let head = entries
                        .last()
                        .map_or("-".to_owned(), |e| format!("{}:{}", e.seq, e.hash));
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

/// The audit keys of the master keys in `file`, or else in the environment.
fn master_keys(file: Option<&std::path::Path>) -> anyhow::Result<Vec<MacKey>> {
    use flotilla_server::vault::master::{self, MASTER_KEY_VAR};
    let env = flotilla_server::vault::ProcessEnvironment;
    if file.is_none() && std::env::var(MASTER_KEY_VAR).is_err() {
        anyhow::bail!(
            "checking an export needs the master keys: set {MASTER_KEY_VAR} (and FLOTILLA_PREVIOUS_MASTER_KEYS) or pass --master-key-file"
        );
    }
    let keys = master::load(file, None, &env).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(keys.audit_keys())
}
