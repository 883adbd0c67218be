//! One module per top-level command group, named as in `flotilla --help`.

pub mod agent;
pub mod agents;
pub mod alerts;
pub mod audit;
pub mod budgets;
pub mod config;
pub mod cost;
pub mod demo;
pub mod doctor;
pub mod events;
pub mod keys;
pub mod pools;
pub mod secrets;
pub mod serve;
pub mod simulate;
pub mod task;
pub mod tenants;
pub mod usage;

use flotilla_client::{Client, TlsOptions};
use std::path::PathBuf;

/// Where client commands find the control plane.
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// Base URL of the control plane.
    #[arg(
        long,
        env = "FLOTILLA_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API key (`flt_…`).
    #[arg(long, env = "FLOTILLA_KEY", hide_env_values = true, global = true)]
    pub key: Option<String>,
    /// PEM CA certificates to trust for an `https` control plane (none are built in).
    #[arg(long, env = "FLOTILLA_CA_FILE", value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for a control plane that requires one (`tls.client_ca_file`).
    #[arg(
        long,
        env = "FLOTILLA_CLIENT_CERT",
        value_name = "FILE",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "FLOTILLA_CLIENT_KEY",
        value_name = "FILE",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

impl Connection {
    /// A client for these settings.
    pub fn client(&self) -> anyhow::Result<Client> {
        if self.key.is_none() {
            anyhow::bail!(
                "no API key: pass --key or set FLOTILLA_KEY (the admin key is printed at the first `flotilla serve`)"
            );
        }
        let tls = TlsOptions {
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        };
        Ok(Client::with_tls(&self.url, self.key.clone(), &tls)?)
    }
}
