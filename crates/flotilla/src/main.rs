//! The `flotilla` binary: one program for every role — the control plane (`serve`), an agent
//! worker (`agent`), the whole system on embedded defaults with a workload (`demo`), and client
//! commands for the API.

mod cmd;
mod logging;
mod output;
mod simulate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Flotilla: a production control plane for AI agents.
#[derive(Parser, Debug)]
#[command(name = "flotilla", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control plane (embedded SQLite in ./flotilla-data by default).
    Serve(cmd::serve::ServeArgs),
    /// Run an agent worker with simulated work that registers with a control plane.
    Agent(cmd::agent::AgentArgs),
    /// Start a control plane and agents on a fresh data directory, run a workload, report.
    Demo(cmd::demo::DemoArgs),
    /// Submit, inspect, list and cancel tasks.
    #[command(subcommand)]
    Task(cmd::task::TaskCommand),
    /// Inspect the agent fleet.
    #[command(subcommand)]
    Agents(cmd::agents::AgentsCommand),
    /// Inspect agent pools: size, load, queue, autoscaling.
    #[command(subcommand)]
    Pools(cmd::pools::PoolsCommand),
    /// Read fleet events: status changes, scaling decisions, provisioner actions.
    #[command(subcommand)]
    Events(cmd::events::EventsCommand),
    /// Pending and firing alerts, and their history.
    #[command(subcommand)]
    Alerts(cmd::alerts::AlertsCommand),
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// Create, list and change tenants.
    #[command(subcommand)]
    Tenants(cmd::tenants::TenantsCommand),
    /// Read, verify and export the tamper-evident audit log.
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
    /// Secrets of the vault: put, get, list, rotate, delete; master-key re-wrapping.
    #[command(subcommand)]
    Secrets(cmd::secrets::SecretsCommand),
    /// Budgets of the model gateway: list, set, delete.
    #[command(subcommand)]
    Budgets(cmd::budgets::BudgetsCommand),
    /// The model gateway's usage ledger: list (or export as CSV).
    #[command(subcommand)]
    Usage(cmd::usage::UsageCommand),
    /// Spending report and model recommendation.
    #[command(subcommand)]
    Cost(cmd::cost::CostCommand),
    /// Diagnose a running deployment: connectivity, performance, resources, security, costs.
    Doctor(cmd::doctor::DoctorArgs),
    /// Check configuration files.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Simulate a pool with the control plane's own balancing and autoscaling decisions.
    Simulate(Box<cmd::simulate::SimulateArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => cmd::serve::run(args).await,
            Command::Agent(args) => {
                logging::init(flotilla_core::config::LogFormat::Human, "info");
                cmd::agent::run(args).await
            }
            Command::Demo(args) => cmd::demo::run(args).await,
            Command::Task(command) => cmd::task::run(command).await,
            Command::Agents(command) => cmd::agents::run(command).await,
            Command::Alerts(command) => cmd::alerts::run(command).await,
            Command::Pools(command) => cmd::pools::run(command).await,
            Command::Events(command) => cmd::events::run(command).await,
            Command::Keys(command) => cmd::keys::run(command).await,
            Command::Tenants(command) => cmd::tenants::run(command).await,
            Command::Audit(command) => cmd::audit::run(command).await,
            Command::Secrets(command) => cmd::secrets::run(command).await,
            Command::Budgets(command) => cmd::budgets::run(command).await,
            Command::Usage(command) => cmd::usage::run(command).await,
            Command::Cost(command) => cmd::cost::run(command).await,
            Command::Doctor(args) => cmd::doctor::run(args).await,
            Command::Config(command) => cmd::config::run(command),
            Command::Simulate(args) => cmd::simulate::run(*args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
