//! The real control plane as a child process: `flotilla serve`.

use crate::process::Managed;
use crate::{BOOTSTRAP_ADMIN_KEY_ENV, HarnessError, free_port};
use flotilla_client::Client;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a start may take until `GET /health` answers.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// `flotilla serve --listen 127.0.0.1:<port> --data-dir <dir> [extra args]`, killed (SIGKILL)
/// when dropped.
///
/// Its stdout and stderr go to `server.stdout.log` and `server.stderr.log` in the data directory
/// (appended across restarts); [`ServerProcess::logs`] returns them for failure messages.
#[derive(Debug)]
pub struct ServerProcess {
    process: Managed,
    port: u16,
    data_dir: PathBuf,
    admin_key: Option<String>,
    // Deleted when the server is dropped, after the process (declared first) was killed.
    _temp_dir: Option<TempDir>,
}

/// Options of a [`ServerProcess`]; see [`ServerProcess::builder`].
#[derive(Debug)]
pub struct ServerProcessBuilder {
    bin: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    data_dir: Option<PathBuf>,
    port: Option<u16>,
}

impl ServerProcessBuilder {
    /// An extra argument after `serve --listen … --data-dir …`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Extra arguments after `serve --listen … --data-dir …`.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable of the process (the rest is inherited). Set
    /// `FLOTILLA_BOOTSTRAP_ADMIN_KEY` to give the server its admin key.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The data directory; a fresh temporary one (deleted on drop) by default.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The port on 127.0.0.1; a free one by default.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Starts the server and waits until `GET /health` answers (up to 30 s).
    pub async fn start(self) -> Result<ServerProcess, HarnessError> {
        let (temp_dir, data_dir) = match self.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir).map_err(HarnessError::Io)?;
                (None, dir)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("flotilla-server-")
                    .tempdir()
                    .map_err(HarnessError::Io)?;
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
        };
        let port = match self.port {
            Some(port) => port,
            None => free_port()?,
        };
        let admin_key = self
            .envs
            .iter()
            .rev()
            .find(|(k, _)| k == BOOTSTRAP_ADMIN_KEY_ENV)
            .map(|(_, v)| v.to_string_lossy().into_owned());

        let mut args: Vec<OsString> = vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}").into(),
            "--data-dir".into(),
            data_dir.clone().into_os_string(),
        ];
        args.extend(self.args);
        let process = Managed::new(
            format!("flotilla serve on 127.0.0.1:{port}"),
            self.bin,
            args,
            self.envs,
            &data_dir,
            "server",
        );
        let mut server = ServerProcess {
            process,
            port,
            data_dir,
            admin_key,
            _temp_dir: temp_dir,
        };
        server.process.spawn()?;
        server.wait_ready().await?;
        Ok(server)
    }
}

impl ServerProcess {
    /// Options for starting the binary at `bin` (e.g. `env!("CARGO_BIN_EXE_flotilla")`).
    pub fn builder(bin: impl Into<PathBuf>) -> ServerProcessBuilder {
        ServerProcessBuilder {
            bin: bin.into(),
            args: Vec::new(),
            envs: Vec::new(),
            data_dir: None,
            port: None,
        }
    }

    /// Starts `bin serve` with the given environment and extra arguments, in a temporary data
    /// directory on a free port.
    pub async fn start<K, V, A>(
        bin: impl Into<PathBuf>,
        envs: impl IntoIterator<Item = (K, V)>,
        extra_args: impl IntoIterator<Item = A>,
    ) -> Result<ServerProcess, HarnessError>
    where
        K: Into<OsString>,
        V: Into<OsString>,
        A: Into<OsString>,
    {
        let mut builder = ServerProcess::builder(bin).args(extra_args);
        for (k, v) in envs {
            builder = builder.env(k, v);
        }
        builder.start().await
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The `FLOTILLA_BOOTSTRAP_ADMIN_KEY` the server was started with, if any.
    pub fn admin_key(&self) -> Option<&str> {
        self.admin_key.as_deref()
    }

    /// A client of this server authenticated with the bootstrap admin key (if one was set).
    pub fn client(&self) -> Result<Client, HarnessError> {
        Ok(Client::new(&self.base_url(), self.admin_key.clone())?)
    }

    /// A client of this server with `key`.
    pub fn client_with_key(&self, key: &str) -> Result<Client, HarnessError> {
        Ok(Client::new(&self.base_url(), Some(key.to_owned()))?)
    }

    /// Everything the server wrote to stdout and stderr, over every start.
    pub fn all_logs(&self) -> String {
        self.process.all_logs()
    }

    /// The end of the server's output (for failure messages); [`ServerProcess::all_logs`] for
    /// all of it.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Prints the captured output to stderr (shown by the test runner when a test fails).
    pub fn print_logs(&self) {
        eprintln!("{}", self.logs());
    }

    /// `Ok` while the process runs; `Err(Exited)` with its logs once it ended.
    pub fn check_running(&mut self) -> Result<(), HarnessError> {
        self.process.check_running()
    }

    /// SIGKILL: the server gets no chance to clean up (a crash).
    pub async fn kill_hard(&mut self) -> Result<ExitStatus, HarnessError> {
        self.process.kill_hard().await
    }

    /// SIGTERM, and wait for the graceful shutdown to finish (killed after 30 s).
    pub async fn terminate(&mut self) -> Result<ExitStatus, HarnessError> {
        self.process.terminate().await
    }

    /// Starts the server again with the same arguments, environment, data directory and port,
    /// killing it first (SIGKILL) if it still runs; waits until it is healthy.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        if self.process.check_running().is_ok() {
            self.process.kill_hard().await?;
        }
        self.process.spawn()?;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let client =
            Client::new(&self.base_url(), None)?.with_request_timeout(Duration::from_secs(1));
        let started = Instant::now();
        loop {
            self.process.check_running()?;
            if client.health().await.is_ok() {
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
