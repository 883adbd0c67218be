//! `flotilla secrets put|get|list|rotate|delete|rewrap`: the vault.
//!
//! Values never come from the command line (where `ps` and shell history would see them): `put`
//! reads stdin or `--value-file`. `get` prints the bare value, for pipes.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table};
use anyhow::Context;
use flotilla_core::wire::RotateSecret;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

/// `flotilla secrets …`.
#[derive(clap::Subcommand, Debug)]
pub enum SecretsCommand {
    /// Write a new version of a secret; the value comes from stdin or --value-file.
    Put {
        #[command(flatten)]
        connection: Connection,
        /// Secret path, e.g. `db/password`.
        path: String,
        /// Read the value from this file instead of stdin (one trailing newline is dropped).
        #[arg(long)]
        value_file: Option<PathBuf>,
        /// Act on another tenant (admin keys only).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Print a secret's value (the newest version unless --version).
    Get {
        #[command(flatten)]
        connection: Connection,
        path: String,
        /// This version instead of the newest (`--version` prints the program's version).
        #[arg(long, value_name = "VERSION")]
        at: Option<u32>,
        /// `table` prints the bare value; `json` the path, version, time and value.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Secret paths with their versions and times (never values).
    List {
        #[command(flatten)]
        connection: Connection,
        /// Only paths starting with this.
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Write a new version with a generated strong random value, or one from --value-file.
    Rotate {
        #[command(flatten)]
        connection: Connection,
        path: String,
        /// Take the new value from this file instead of generating one.
        #[arg(long, conflicts_with = "bytes")]
        value_file: Option<PathBuf>,
        /// Random bytes in a generated value (16-1024, default 32).
        #[arg(long)]
        bytes: Option<u32>,
        /// Print the generated value.
        #[arg(long)]
        reveal: bool,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Delete every version of a secret.
    Delete {
        #[command(flatten)]
        connection: Connection,
        path: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Re-wrap every data key with the current master key, after a master-key rotation (admin).
    Rewrap {
        #[command(flatten)]
        connection: Connection,
    },
}

/// Drops one trailing newline (`\n` or `\r\n`), which editors and `echo` add.
fn without_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

fn read_value(file: Option<&Path>) -> anyhow::Result<String> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {} (as UTF-8 text)", path.display()))?,
        None => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("Enter the value, then Ctrl-D:");
            }
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .context("cannot read the value from stdin (as UTF-8 text)")?;
            text
        }
    };
    let text = without_newline(text);
    if text.is_empty() {
        anyhow::bail!("the value is empty; pass it on stdin or with --value-file");
    }
    Ok(text)
}

/// Runs the command.
pub async fn run(command: SecretsCommand) -> anyhow::Result<()> {
    match command {
        SecretsCommand::Put {
            connection,
            path,
            value_file,
            tenant,
        } => {
            let client = connection.client()?;
            let value = read_value(value_file.as_deref())?;
            let written = client.put_secret(&path, &value, tenant.as_deref()).await?;
            println!("{} version {}", written.path, written.version);
        }
        SecretsCommand::Get {
            connection,
            path,
            at: version,
            output,
            tenant,
        } => {
            let secret = connection
                .client()?
                .get_secret(&path, version, tenant.as_deref())
                .await?;
            match output {
                Output::Json => print_json(&secret)?,
                Output::Table => println!("{}", secret.value),
            }
        }
        SecretsCommand::List {
            connection,
            prefix,
            output,
            tenant,
        } => {
            let list = connection
                .client()?
                .list_secrets(prefix.as_deref(), tenant.as_deref())
                .await?;
            if output == Output::Json {
                return print_json(&list);
            }
            let mut t = table(["PATH", "LATEST", "VERSIONS", "UPDATED"]);
            for s in &list.secrets {
                let versions: Vec<String> =
                    s.versions.iter().map(|v| v.version.to_string()).collect();
                t.add_row([
                    s.path.clone(),
                    s.latest_version.to_string(),
                    versions.join(","),
                    s.updated_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ]);
            }
            println!("{t}");
        }
        SecretsCommand::Rotate {
            connection,
            path,
            value_file,
            bytes,
            reveal,
            tenant,
        } => {
            let client = connection.client()?;
            let value = value_file
                .as_deref()
                .map(|f| read_value(Some(f)))
                .transpose()?;
            let rotation = RotateSecret {
                value,
                bytes,
                reveal,
            };
            let written = client
                .rotate_secret(&path, &rotation, tenant.as_deref())
                .await?;
            match &written.value {
                Some(value) => println!("{value}"),
                None => println!("{} version {}", written.path, written.version),
            }
        }
        SecretsCommand::Delete {
            connection,
            path,
            tenant,
        } => {
            let deleted = connection
                .client()?
                .delete_secret(&path, tenant.as_deref())
                .await?;
            println!("{} deleted ({} versions)", deleted.path, deleted.versions);
        }
        SecretsCommand::Rewrap { connection } => {
            let report = connection.client()?.rewrap_vault().await?;
            println!(
                "Re-wrapped {} data keys with master key {}; {} wrapped by a key that is not configured",
                report.rewrapped, report.master_key_id, report.unreadable
            );
        }
    }
    Ok(())
}
