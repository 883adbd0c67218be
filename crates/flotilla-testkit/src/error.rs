//! Errors of the harnesses.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a harness could not start, stop or reach a process.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file or socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[source] std::io::Error),
    /// The process did not become ready in time; `logs` holds its output so far.
    #[error("{what} was not ready after {waited:?}\n{logs}")]
    NotReady {
        what: String,
        waited: Duration,
        logs: String,
    },
    /// The process exited while it was expected to run; `logs` holds its output.
    #[error("{what} exited with {status}\n{logs}")]
    Exited {
        what: String,
        status: ExitStatus,
        logs: String,
    },
    /// The process did not exit within the time allowed after SIGTERM (it was then killed).
    #[error("{what} did not exit within {waited:?} of SIGTERM and was killed\n{logs}")]
    StopTimeout {
        what: String,
        waited: Duration,
        logs: String,
    },
    /// The process is not running.
    #[error("{0} is not running")]
    NotRunning(String),
    /// Sending a signal failed.
    #[error("cannot signal the process: {0}")]
    Signal(#[source] nix::Error),
    /// A call through the typed client failed.
    #[error(transparent)]
    Client(#[from] flotilla_client::ClientError),
}
