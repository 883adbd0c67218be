//! Test support for Flotilla (a dev-dependency only): a scriptable in-process agent for fault
//! tests of the control plane, and harnesses that start the real `flotilla` binary as a server
//! or an agent process.
//!
//! Nothing here is used by production code, so it may block briefly and be generous with
//! timeouts; it must still never leave a process or thread behind once its handle is dropped.

mod agent_process;
mod error;
pub mod mock_provider;
pub mod pki;
mod process;
mod scripted;
mod server_process;

pub use agent_process::{AgentProcess, AgentProcessBuilder};
pub use error::HarnessError;
pub use mock_provider::MockProvider;
pub use scripted::{Behaviour, ReceivedCall, ScriptedAgent};
pub use server_process::{ServerProcess, ServerProcessBuilder};

/// Environment variable naming the PostgreSQL database of the tests.
pub const POSTGRES_URL_ENV: &str = "FLOTILLA_TEST_POSTGRES_URL";
/// The database used when [`POSTGRES_URL_ENV`] is not set.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Environment variable through which tests hand the server its first admin key.
pub const BOOTSTRAP_ADMIN_KEY_ENV: &str = "FLOTILLA_BOOTSTRAP_ADMIN_KEY";

/// The PostgreSQL URL of the tests: `FLOTILLA_TEST_POSTGRES_URL`, or a local default.
pub fn postgres_url() -> String {
    std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; another process could
/// still take it before the caller binds it, which is rare enough for tests).
pub fn free_port() -> Result<u16, HarnessError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(HarnessError::Io)?;
    Ok(listener.local_addr().map_err(HarnessError::Io)?.port())
}
