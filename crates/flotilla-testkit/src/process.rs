//! A child process with its output captured to files, killed when dropped.

use crate::HarnessError;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// How long a SIGTERM'd process may take to exit before it is killed.
pub(crate) const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest captured output returned by [`Managed::logs`], per stream.
const LOG_TAIL_BYTES: usize = 64 * 1024;

/// One program, started (and restarted) with the same arguments and environment.
#[derive(Debug)]
pub(crate) struct Managed {
    /// Used in messages: `flotilla serve on 127.0.0.1:4000`.
    pub(crate) what: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    stdout: PathBuf,
    stderr: PathBuf,
    starts: u32,
    child: Option<Child>,
}

impl Managed {
    pub(crate) fn new(
        what: String,
        program: PathBuf,
        args: Vec<OsString>,
        envs: Vec<(OsString, OsString)>,
        log_dir: &Path,
        log_name: &str,
    ) -> Managed {
        Managed {
            what,
            program,
            args,
            envs,
            stdout: log_dir.join(format!("{log_name}.stdout.log")),
            stderr: log_dir.join(format!("{log_name}.stderr.log")),
            starts: 0,
            child: None,
        }
    }

    pub(crate) fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// Starts the program; output is appended to the log files, after a marker line.
    pub(crate) fn spawn(&mut self) -> Result<(), HarnessError> {
        self.starts += 1;
        let stdout = open_log(&self.stdout, self.starts)?;
        let stderr = open_log(&self.stderr, self.starts)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// `Err(Exited)` when the process has ended (with its logs), `Err(NotRunning)` when it was
    /// never started or was stopped.
    pub(crate) fn check_running(&mut self) -> Result<(), HarnessError> {
        let Some(child) = self.child.as_mut() else {
            return Err(HarnessError::NotRunning(self.what.clone()));
        };
        match child.try_wait().map_err(HarnessError::Io)? {
            None => Ok(()),
            Some(status) => {
                self.child = None;
                Err(HarnessError::Exited {
                    what: self.what.clone(),
                    status,
                    logs: self.logs(),
                })
            }
        }
    }

    /// SIGKILL, then reap.
    pub(crate) async fn kill_hard(&mut self) -> Result<ExitStatus, HarnessError> {
        let Some(mut child) = self.child.take() else {
            return Err(HarnessError::NotRunning(self.what.clone()));
        };
        // `kill` fails only when the process has already exited; `wait` then reaps it.
        let _ = child.start_kill();
        child.wait().await.map_err(HarnessError::Io)
    }

    /// SIGTERM, then wait up to [`TERMINATE_TIMEOUT`]; killed if it does not exit by then.
    pub(crate) async fn terminate(&mut self) -> Result<ExitStatus, HarnessError> {
        self.signal(Signal::SIGTERM)?;
        let Some(mut child) = self.child.take() else {
            return Err(HarnessError::NotRunning(self.what.clone()));
        };
        match tokio::time::timeout(TERMINATE_TIMEOUT, child.wait()).await {
            Ok(status) => status.map_err(HarnessError::Io),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(HarnessError::StopTimeout {
                    what: self.what.clone(),
                    waited: TERMINATE_TIMEOUT,
                    logs: self.logs(),
                })
            }
        }
    }

    /// Sends `signal` to the running process.
    pub(crate) fn signal(&mut self, signal: Signal) -> Result<(), HarnessError> {
        self.check_running()?;
        let pid = self
            .pid()
            .ok_or_else(|| HarnessError::NotRunning(self.what.clone()))?;
        let pid = i32::try_from(pid).map_err(|_| HarnessError::NotRunning(self.what.clone()))?;
        kill(Pid::from_raw(pid), signal).map_err(HarnessError::Signal)
    }

    /// The captured stdout and stderr (their last 64 KiB each), for failure messages.
    /// Everything the process wrote to stdout and stderr, over every start.
    pub(crate) fn all_logs(&self) -> String {
        let read = |path: &Path| {
            std::fs::read(path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
        };
        format!("{}\n{}", read(&self.stdout), read(&self.stderr))
    }

    pub(crate) fn logs(&self) -> String {
        format!(
            "--- {} stdout ({}) ---\n{}\n--- {} stderr ({}) ---\n{}",
            self.what,
            self.stdout.display(),
            tail(&self.stdout),
            self.what,
            self.stderr.display(),
            tail(&self.stderr)
        )
    }
}

fn open_log(path: &Path, start: u32) -> Result<File, HarnessError> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(HarnessError::Io)?;
    writeln!(file, "=== harness: start #{start} ===").map_err(HarnessError::Io)?;
    Ok(file)
}

fn tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}
