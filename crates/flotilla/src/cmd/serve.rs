//! `flotilla serve`: the control plane.

use crate::logging;
use anyhow::Context;
use flotilla_core::config::{self, Config, Override};
use flotilla_server::{RunningServer, StartOptions};
use std::path::PathBuf;
use tokio::signal::unix::{SignalKind, signal};

/// Environment variable naming an admin key to create at start-up.
pub const BOOTSTRAP_KEY_VAR: &str = "FLOTILLA_BOOTSTRAP_ADMIN_KEY";

/// Flags of `flotilla serve`; each overrides the file and the environment.
#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// Configuration file (TOML). Without it, defaults and FLOTILLA_* variables apply.
    #[arg(long, env = "FLOTILLA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the API listener [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<String>,
    /// Directory of the embedded database [default: ./flotilla-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Database URL: postgres://… switches to PostgreSQL.
    #[arg(long)]
    pub database_url: Option<String>,
}

/// Reads the file (if any), the environment and the flags into a validated configuration.
pub fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let text = match &args.config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    let name = args
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut flags: Vec<Override> = Vec::new();
    let mut flag =
        |key: &str, value: String| flags.push((key.to_owned(), toml::Value::String(value)));
    if let Some(listen) = &args.listen {
        flag("server.listen", listen.clone());
    }
    if let Some(dir) = &args.data_dir {
        flag("server.data_dir", dir.display().to_string());
    }
    if let Some(url) = &args.database_url {
        flag("database.url", url.clone());
    }
    Ok(config::load(
        text.as_deref().map(|t| (name.as_str(), t)),
        &env,
        &flags,
    )?)
}

/// Opens the configured store (migrating it) and starts the control plane.
pub async fn start(config: Config, bootstrap_key: Option<String>) -> anyhow::Result<RunningServer> {
    let store = flotilla_store::open(&config.database, config.database_max_connections)
        .await
        .with_context(|| match &config.database {
            config::Database::Sqlite(path) => {
                format!("cannot open the SQLite database {}", path.display())
            }
            config::Database::Postgres(_) => "cannot open the PostgreSQL database".to_owned(),
        })?;
    Ok(flotilla_server::start(
        config,
        store,
        StartOptions {
            bootstrap_key,
            clock: None,
            agent_program: std::env::current_exe().ok(),
        },
    )
    .await?)
}

/// Runs until SIGTERM or SIGINT, then shuts down in order.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    logging::init(config.log_format, &config.log_level);
    let bootstrap_key = std::env::var(BOOTSTRAP_KEY_VAR)
        .ok()
        .filter(|k| !k.is_empty());
    let server = start(config, bootstrap_key).await?;
    if let Some(key) = &server.new_admin_key {
        println!(
            "Bootstrap admin key (shown once; store it safely, e.g. export FLOTILLA_KEY=…):\n  {}",
            key.0
        );
    }
    println!("Flotilla control plane listening on http://{}", server.addr);
    let token = server.shutdown_token();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
        () = token.cancelled() => {}
    }
    server.stop().await;
    Ok(())
}
