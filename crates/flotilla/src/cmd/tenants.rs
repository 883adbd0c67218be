//! `flotilla tenants …`: create, list and change tenants.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table, time};
use flotilla_core::rate::Rate;
use flotilla_core::tenant::{NewTenant, TenantUpdate};

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

/// Runs `flotilla tenants …`.
pub async fn run(command: TenantsCommand) -> anyhow::Result<()> {
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
