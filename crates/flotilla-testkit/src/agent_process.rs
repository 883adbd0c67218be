//! A real agent worker as a child process: `flotilla agent`.

use crate::process::Managed;
use crate::{HarnessError, free_port};
use flotilla_core::id::AgentId;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a start may take until the agent reports that it registered.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// `flotilla agent --type T --control-plane URL --key KEY --listen 127.0.0.1:<port> [extra]`,
/// killed (SIGKILL) when dropped.
///
/// It counts as started once it printed `agent <id> (<type>) listening on <url>` to stdout,
/// which it does after registering; the id is parsed from that line.
#[derive(Debug)]
pub struct AgentProcess {
    process: Managed,
    port: u16,
    id: Option<AgentId>,
    _temp_dir: Option<TempDir>,
}

/// Options of an [`AgentProcess`]; see [`AgentProcess::builder`].
#[derive(Debug)]
pub struct AgentProcessBuilder {
    bin: PathBuf,
    agent_type: String,
    control_plane: String,
    key: String,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log_dir: Option<PathBuf>,
    port: Option<u16>,
}

impl AgentProcessBuilder {
    /// An extra argument (e.g. `--capacity`, `--median-ms`).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Extra arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable of the process (the rest is inherited).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Where `agent-<port>.stdout.log`/`.stderr.log` go; a temporary directory by default.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// The port on 127.0.0.1; a free one by default (kept across restarts).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Starts the agent and waits until it registered (up to 30 s).
    pub async fn start(self) -> Result<AgentProcess, HarnessError> {
        let port = match self.port {
            Some(port) => port,
            None => free_port()?,
        };
        let (temp_dir, log_dir) = match self.log_dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir).map_err(HarnessError::Io)?;
                (None, dir)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("flotilla-agent-")
                    .tempdir()
                    .map_err(HarnessError::Io)?;
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
        };
        let mut args: Vec<OsString> = vec![
            "agent".into(),
            "--type".into(),
            self.agent_type.clone().into(),
            "--control-plane".into(),
            self.control_plane.into(),
            "--key".into(),
            self.key.into(),
            "--listen".into(),
            format!("127.0.0.1:{port}").into(),
        ];
        args.extend(self.args);
        let process = Managed::new(
            format!("flotilla agent {} on 127.0.0.1:{port}", self.agent_type),
            self.bin,
            args,
            self.envs,
            &log_dir,
            &format!("agent-{port}"),
        );
        let mut agent = AgentProcess {
            process,
            port,
            id: None,
            _temp_dir: temp_dir,
        };
        agent.spawn_and_wait().await?;
        Ok(agent)
    }
}

impl AgentProcess {
    /// Options for starting `bin agent` of `agent_type` against `control_plane` with `key`.
    pub fn builder(
        bin: impl Into<PathBuf>,
        agent_type: impl Into<String>,
        control_plane: impl Into<String>,
        key: impl Into<String>,
    ) -> AgentProcessBuilder {
        AgentProcessBuilder {
            bin: bin.into(),
            agent_type: agent_type.into(),
            control_plane: control_plane.into(),
            key: key.into(),
            args: Vec::new(),
            envs: Vec::new(),
            log_dir: None,
            port: None,
        }
    }

    /// The id it registered under at its last start (it may register again under a new id if
    /// the control plane forgets it).
    pub fn id(&self) -> Option<AgentId> {
        self.id
    }

    /// `http://127.0.0.1:<port>`, the URL it advertises.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The file its stdout goes to.
    pub fn stdout_path(&self) -> &Path {
        self.process.stdout_path()
    }

    /// The captured stdout and stderr.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// `(task id, attempt)` of every `/execute` it logged running, over every start, with how
    /// often each ran. The agent logs them at debug level: start it with
    /// `RUST_LOG=info,flotilla_agent=debug`.
    pub fn executions(&self) -> HashMap<(String, i32), usize> {
        let mut seen = HashMap::new();
        let text = strip_ansi(&self.process.all_logs());
        for line in text.lines().filter(|l| l.contains("Executing task.")) {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(|v| v.trim_matches(|c: char| !c.is_alphanumeric() && c != '-'))
            };
            if let (Some(task), Some(attempt)) = (field("task_id="), field("attempt=")) {
                *seen
                    .entry((task.to_owned(), attempt.parse().unwrap_or(0)))
                    .or_insert(0) += 1;
            }
        }
        seen
    }

    /// Prints the captured output to stderr.
    pub fn print_logs(&self) {
        eprintln!("{}", self.logs());
    }

    /// `Ok` while the process runs; `Err(Exited)` with its logs once it ended.
    pub fn check_running(&mut self) -> Result<(), HarnessError> {
        self.process.check_running()
    }

    /// SIGKILL: the agent dies without draining or deregistering.
    pub async fn kill_hard(&mut self) -> Result<ExitStatus, HarnessError> {
        self.process.kill_hard().await
    }

    /// SIGTERM, and wait until it drained, deregistered and exited (killed after 30 s).
    pub async fn terminate(&mut self) -> Result<ExitStatus, HarnessError> {
        self.process.terminate().await
    }

    /// Starts it again with the same arguments and port (killing it first if it still runs);
    /// waits until it registered.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        if self.process.check_running().is_ok() {
            self.process.kill_hard().await?;
        }
        self.spawn_and_wait().await
    }

    async fn spawn_and_wait(&mut self) -> Result<(), HarnessError> {
        // Only lines written after this start count.
        let offset = std::fs::metadata(self.process.stdout_path())
            .map(|m| m.len())
            .unwrap_or(0);
        self.process.spawn()?;
        let started = Instant::now();
        loop {
            self.process.check_running()?;
            if let Some(id) = registered_id(self.process.stdout_path(), offset) {
                self.id = Some(id);
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(HarnessError::NotReady {
                    what: self.process.what.clone(),
                    waited: READY_TIMEOUT,
                    logs: self.logs(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// The id of the first `agent <id> (<type>) listening on <url>` line after `offset`.
fn registered_id(stdout: &Path, offset: u64) -> Option<AgentId> {
    let bytes = std::fs::read(stdout).ok()?;
    let start = usize::try_from(offset).ok()?.min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    text.lines().find_map(parse_ready_line)
}

fn parse_ready_line(line: &str) -> Option<AgentId> {
    let rest = line.strip_prefix("agent ")?;
    if !rest.contains(" listening on ") {
        return None;
    }
    rest.split_whitespace().next()?.parse().ok()
}

/// The text without terminal colour codes (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ready_line() {
        let line = "agent 0190a8f2-6f4b-7c3e-9a2b-3c4d5e6f7a8b (code_generator) listening on http://127.0.0.1:4100";
        assert_eq!(
            parse_ready_line(line).map(|id| id.to_string()).as_deref(),
            Some("0190a8f2-6f4b-7c3e-9a2b-3c4d5e6f7a8b")
        );
        assert_eq!(parse_ready_line("agent starting"), None);
        assert_eq!(parse_ready_line("2024 INFO agent registered"), None);
    }
}
