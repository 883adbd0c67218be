//! One module per subcommand.

pub mod access;
pub mod agent;
pub mod agents;
pub mod alerts;
pub mod config;
pub mod demo;
pub mod pools;
pub mod secrets;
pub mod serve;
pub mod simulate;
pub mod task;

use flotilla_client::Client;

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
}

impl Connection {
    /// A client for these settings.
    pub fn client(&self) -> anyhow::Result<Client> {
        if self.key.is_none() {
            anyhow::bail!(
                "no API key: pass --key or set FLOTILLA_KEY (the admin key is printed at the first `flotilla serve`)"
            );
        }
        Ok(Client::new(&self.url, self.key.clone())?)
    }
}
