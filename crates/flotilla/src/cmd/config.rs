//! `flotilla config check FILE`: validates a configuration file and explains each error.

use flotilla_core::config;
use std::path::PathBuf;

/// `flotilla config …`.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a configuration file (with the FLOTILLA_* environment applied).
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

/// Runs the command.
pub fn run(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let env: Vec<(String, String)> = std::env::vars().collect();
            let name = file.display().to_string();
            let config = config::load(Some((&name, &text)), &env, &[])?;
            println!(
                "{name}: ok (listen {}, {} pool(s))",
                config.listen,
                config.pools.len()
            );
            Ok(())
        }
    }
}
