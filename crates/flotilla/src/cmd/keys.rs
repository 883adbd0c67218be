//! `flotilla keys …`: create, list and revoke API keys.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table, time};
use anyhow::Context;
use flotilla_core::auth::{NewKeyRequest, Role};
use flotilla_core::rate::Rate;

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

/// Runs `flotilla keys …`.
pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
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
