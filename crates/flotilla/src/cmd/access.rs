//! `flotilla keys …`, `flotilla tenants …` and `flotilla audit …`.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table};
use anyhow::Context;
use flotilla_core::Timestamp;
use flotilla_core::audit::{AuditEntry, verify};
use flotilla_core::auth::{NewKeyRequest, Role};
use flotilla_core::rate::Rate;
use flotilla_core::tenant::{NewTenant, TenantUpdate};
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// `flotilla keys …`.
#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; prints it once (store it: it is not shown again).
    Create {
        #[command(flatten)]
        connection: Connection,
        /// What the key is for.
        #[arg(long)]
        name: String,
        /// admin, operator, submitter, agent or viewer.
        #[arg(long)]
        role: Role,
        /// When it stops working, e.g. `30d` from now.
        #[arg(long = "expires-in", value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
        /// Its own rate limit, e.g. `100/s`.
        #[arg(long)]
        rate_limit: Option<Rate>,
        /// Create it in another tenant (admin keys only).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// The keys of a tenant (never their secrets).
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke a key by its public id (the part after `flt_`).
    Revoke {
        #[command(flatten)]
        connection: Connection,
        id: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// `flotilla tenants …`.
#[derive(clap::Subcommand, Debug)]
pub enum TenantsCommand {
    /// Create a tenant (admin keys only).
    Create {
        #[command(flatten)]
        connection: Connection,
        name: String,
        #[arg(long)]
        rate_limit: Option<Rate>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Every tenant (admin keys), or your own.
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Rename a tenant or set its rate limit (`--rate-limit off` returns to the default).
    Update {
        #[command(flatten)]
        connection: Connection,
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        rate_limit: Option<String>,
    },
}

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

pub async fn run_keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            connection,
            name,
            role,
            expires_in,
            rate_limit,
            tenant,
            output,
        } => {
            let expires_at = expires_in
                .map(|d| chrono::Duration::from_std(d).map(|d| chrono::Utc::now() + d))
                .transpose()
                .context("--expires-in is too long")?;
            let request = NewKeyRequest {
                name,
                role,
                expires_at,
                rate_limit,
            };
            let created = connection
                .client()?
                .create_key(&request, tenant.as_deref())
                .await?;
            if output == Output::Json {
                return print_json(&created);
            }
            println!("{}", created.key);
            eprintln!(
                "Key {} ({}, tenant {}): store it now, it is not shown again.",
                created.record.id, created.record.role, created.record.tenant_id
            );
            Ok(())
        }
        KeysCommand::List {
            connection,
            tenant,
            output,
        } => {
            let list = connection.client()?.list_keys(tenant.as_deref()).await?;
            if output == Output::Json {
                return print_json(&list);
            }
            let mut t = table([
                "ID", "NAME", "ROLE", "CREATED", "EXPIRES", "REVOKED", "RATE",
            ]);
            for k in &list.keys {
                t.add_row([
                    k.id.clone(),
                    k.name.clone(),
                    k.role.to_string(),
                    time(Some(k.created_at)),
                    time(k.expires_at),
                    time(k.revoked_at),
                    k.rate_limit
                        .map_or_else(|| "default".into(), |r| r.to_string()),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        KeysCommand::Revoke {
            connection,
            id,
            tenant,
        } => {
            let key = connection
                .client()?
                .revoke_key(&id, tenant.as_deref())
                .await?;
            println!("Revoked key {} ({}).", key.id, key.name);
            Ok(())
        }
    }
}

pub async fn run_tenants(command: TenantsCommand) -> anyhow::Result<()> {
    match command {
        TenantsCommand::Create {
            connection,
            name,
            rate_limit,
            output,
        } => {
            let tenant = connection
                .client()?
                .create_tenant(&NewTenant { name, rate_limit })
                .await?;
            if output == Output::Json {
                return print_json(&tenant);
            }
            println!("{}", tenant.id);
            Ok(())
        }
        TenantsCommand::List { connection, output } => {
            let list = connection.client()?.list_tenants().await?;
            if output == Output::Json {
                return print_json(&list);
            }
            let mut t = table(["ID", "NAME", "CREATED", "RATE"]);
            for tenant in &list.tenants {
                t.add_row([
                    tenant.id.to_string(),
                    tenant.name.clone(),
                    time(Some(tenant.created_at)),
                    tenant
                        .rate_limit
                        .map_or_else(|| "default".into(), |r| r.to_string()),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        TenantsCommand::Update {
            connection,
            id,
            name,
            rate_limit,
        } => {
            let rate_limit = rate_limit
                .map(|r| match r.as_str() {
                    "off" | "default" => Ok(None),
                    other => other.parse::<Rate>().map(Some),
                })
                .transpose()?;
            let tenant = connection
                .client()?
                .update_tenant(&id, &TenantUpdate { name, rate_limit })
                .await?;
            println!("Updated tenant {} ({}).", tenant.id, tenant.name);
            Ok(())
        }
    }
}

pub async fn run_audit(command: AuditCommand) -> anyhow::Result<()> {
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

fn time(at: Option<Timestamp>) -> String {
    at.map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}
