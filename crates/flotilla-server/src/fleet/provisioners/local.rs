//! The `local` provisioner (docs/design.md §5), the embedded default: it spawns agent processes on
//! this machine and keeps them running, restarting one that exits on its own after an
//! exponential backoff, until it is told to stop it.
//!
//! It is shell code and decides nothing: how many processes a pool should have is the
//! autoscaler's decision, carried out through [`LocalSupervisor::spawn`] and
//! [`LocalSupervisor::stop`].
//!
//! Each process inherits the control plane's stdout and stderr: the reference agent writes its
//! own timestamped log lines, and an inherited descriptor, unlike a pipe read by a task of ours,
//! neither stalls the agent when we fall behind nor breaks when the control plane dies. Each
//! process also gets `FLOTILLA_INSTANCE_NAME` (which the agent reports at registration, so that a
//! registered instance maps to the process that was spawned for it) and `FLOTILLA_PARENT_PID`
//! (which the agent watches, so that it exits when the control plane is killed and cannot stop
//! it; `unsafe` is forbidden here, which rules out `prctl(PR_SET_PDEATHSIG)` in `pre_exec`).
//!
//! Nothing else of the control plane's environment (its master key, a preset admin key, database
//! credentials) reaches a process: it gets [`INHERITED_ENV`], its [`ProcessSpec::env`] and
//! secrets, and those two. Anything else an agent needs (`RUST_LOG`, `FLOTILLA_CA_FILE`,
//! `TMPDIR`, a proxy) goes in its pool's `env`.

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[cfg(test)]
mod tests;

/// The variable that tells a spawned process its instance name.
pub(crate) const INSTANCE_NAME_ENV: &str = "FLOTILLA_INSTANCE_NAME";
/// The variable that tells a spawned process the pid of the control plane that spawned it.
pub(crate) const PARENT_PID_ENV: &str = "FLOTILLA_PARENT_PID";
/// The only variables of the control plane's environment a spawned process gets (when set), with
/// every `LC_*` locale category: what any program needs to find executables, its home, its
/// language and the time zone. Nothing here carries a secret.
pub(crate) const INHERITED_ENV: [&str; 5] = ["PATH", "HOME", "LANG", "LANGUAGE", "TZ"];

/// First wait before a restart.
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest wait before a restart.
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A process that ran at least this long before it exited counts as healthy: its restart
/// waits the base delay again.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);

/// What to run for one instance.
#[derive(Clone)]
pub(crate) struct ProcessSpec {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments. Not logged, and only counted by `Debug`: a caller may pass a key here,
    /// although the environment is the better place for one.
    pub args: Vec<String>,
    /// The process's environment besides [`INHERITED_ENV`] (which these override). Values may
    /// hold secrets (an agent key, a provider key): they are never logged, and `Debug` shows only
    /// the names.
    pub env: Vec<(String, String)>,
    /// Variables whose values are vault secrets (`secret://…`), resolved at every start.
    pub secrets: Option<crate::vault::EnvSecrets>,
    /// Directory for the process's output (`<instance name>.log`, appended across restarts);
    /// `None` inherits the control plane's stdout and stderr.
    pub log_dir: Option<PathBuf>,
}

impl fmt::Debug for ProcessSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(key, _)| key.as_str()).collect();
        f.debug_struct("ProcessSpec")
            .field("program", &self.program)
            .field("args", &self.args.len())
            .field("env", &env)
            .field("secrets", &self.secrets)
            .field("log_dir", &self.log_dir)
            .finish()
    }
}

/// The name of one supervised instance: `<pool>-<n>`, with `n` counting up from 1 per pool and
/// never reused while the supervisor lives, so that a name denotes one instance across restarts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct InstanceName(pub String);

impl InstanceName {
    /// The name as a string.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happened to a supervised process, in order per instance: `Started`, then `Exited`, then
/// either `Started` again (after `restart_in`) or `Stopped`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProcessEvent {
    /// A process was started for the instance (first start or restart).
    Started {
        pool: String,
        name: InstanceName,
        pid: u32,
    },
    /// The instance's process exited, or could not be started (`status` then begins with
    /// `failed to start`). `restart_in` is when it will be started again; `None` when it exited
    /// because it was stopped.
    Exited {
        pool: String,
        name: InstanceName,
        /// `exit status 1`, `signal 9 (SIGKILL)`, `failed to start: …`.
        status: String,
        restart_in: Option<Duration>,
    },
    /// The instance was stopped and is gone; it will not be restarted.
    Stopped { pool: String, name: InstanceName },
}

/// One supervised instance as [`LocalSupervisor::list`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcessInfo {
    pub name: InstanceName,
    pub pool: String,
    /// The running process; `None` while it waits to be restarted.
    pub pid: Option<u32>,
    /// When the instance was spawned (restarts do not change it).
    pub started_at: SystemTime,
    /// How many times its process was restarted.
    pub restarts: u32,
}

/// The restart delays: `base`, doubling up to `max`; back to `base` after a process has run
/// [`BACKOFF_RESET_AFTER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Backoff {
    base: Duration,
    max: Duration,
    reset_after: Duration,
}

impl Backoff {
    /// After a process that ran `ran_for` exited, with `failures` quick exits before it:
    /// the new count of quick exits and the wait before the restart.
    fn after_exit(&self, failures: u32, ran_for: Duration) -> (u32, Duration) {
        let failures = if ran_for >= self.reset_after {
            1
        } else {
            failures.saturating_add(1)
        };
        let factor = 2u32.checked_pow(failures - 1).unwrap_or(u32::MAX);
        let delay = self
            .base
            .checked_mul(factor)
            .map_or(self.max, |delay| delay.min(self.max));
        (failures, delay)
    }
}

/// Supervises local agent processes. Cheap to clone: clones share the processes.
///
/// Dropping it does not stop the processes; [`LocalSupervisor::shutdown`] does (and so does the
/// end of the Tokio runtime, since every child is killed when its supervising task is dropped).
#[derive(Clone)]
pub(crate) struct LocalSupervisor {
    shared: Arc<Shared>,
    backoff: Backoff,
}

/// State shared by the handles and the supervising tasks.
struct Shared {
    events: mpsc::UnboundedSender<ProcessEvent>,
    state: Mutex<State>,
    /// One supervising task per instance.
    tasks: TaskTracker,
}

#[derive(Default)]
struct State {
    /// Set by shutdown: nothing is spawned afterwards.
    closed: bool,
    /// The last instance number handed out per pool.
    last_number: HashMap<String, u64>,
    /// Orders instances by age.
    next_seq: u64,
    instances: HashMap<InstanceName, Instance>,
}

struct Instance {
    pool: String,
    seq: u64,
    started_at: SystemTime,
    pid: Option<u32>,
    restarts: u32,
    /// A stop request, with its grace period.
    stop: watch::Sender<Option<Duration>>,
    /// Cancelled once the instance is gone (process reaped, entry removed, `Stopped` sent).
    gone: CancellationToken,
}

impl Instance {
    /// Asks the instance to stop; of several requests, the shortest grace wins.
    fn request_stop(&self, grace: Duration) {
        self.stop
            .send_modify(|current| *current = Some(current.map_or(grace, |g| g.min(grace))));
    }
}

/// How one run of a process ended.
enum Outcome {
    /// It exited (or failed to start) on its own after running `ran_for`.
    Exited { status: String, ran_for: Duration },
    /// It was stopped on request.
    Stopped,
}

impl LocalSupervisor {
    /// A supervisor that reports to `events` (events are dropped if the receiver is gone).
    pub(crate) fn new(events: mpsc::UnboundedSender<ProcessEvent>) -> Self {
        Self {
            shared: Arc::new(Shared {
                events,
                state: Mutex::new(State::default()),
                tasks: TaskTracker::new(),
            }),
            backoff: Backoff {
                base: DEFAULT_BACKOFF_BASE,
                max: DEFAULT_BACKOFF_MAX,
                reset_after: BACKOFF_RESET_AFTER,
            },
        }
    }

    /// Sets the restart delays (500 ms doubling up to 30 s by default) for processes spawned
    /// through this handle from now on (tests shorten or lengthen them).
    #[cfg(test)]
    pub(crate) fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff.base = base;
        self.backoff.max = max.max(base);
        self
    }

    /// Starts one process for `pool` and supervises it: restarts it when it exits on its own,
    /// with exponential backoff (500 ms doubling to 30 s; reset after it has run 60 s). Its
    /// environment is [`INHERITED_ENV`], the spec's `env` and secrets,
    /// `FLOTILLA_INSTANCE_NAME=<name>` and `FLOTILLA_PARENT_PID=<this process's pid>`; nothing
    /// else of ours. After [`LocalSupervisor::shutdown`] it starts nothing: the name is used up
    /// and a `Stopped` event reported at once.
    ///
    /// Must be called within a Tokio runtime.
    pub(crate) fn spawn(&self, pool: &str, spec: ProcessSpec) -> InstanceName {
        let mut state = self.shared.lock();
        let number = state.last_number.entry(pool.to_owned()).or_insert(0);
        *number += 1;
        let name = InstanceName(format!("{pool}-{number}"));
        if state.closed {
            drop(state);
            tracing::warn!(pool, instance = %name, "Not spawning: the supervisor is shut down");
            self.shared.emit(ProcessEvent::Stopped {
                pool: pool.to_owned(),
                name: name.clone(),
            });
            return name;
        }
        let (stop, stop_rx) = watch::channel(None);
        let gone = CancellationToken::new();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.instances.insert(
            name.clone(),
            Instance {
                pool: pool.to_owned(),
                seq,
                started_at: SystemTime::now(),
                pid: None,
                restarts: 0,
                stop,
                gone: gone.clone(),
            },
        );
        drop(state);
        let run = Run {
            shared: Arc::clone(&self.shared),
            backoff: self.backoff,
            pool: pool.to_owned(),
            name: name.clone(),
            spec,
            stop: stop_rx,
        };
        self.shared.tasks.spawn(async move {
            run.supervise().await;
            gone.cancel();
        });
        name
    }

    /// Stops one process: SIGTERM, waits up to `grace`, then SIGKILL; never restarts it (an
    /// instance waiting to be restarted is simply dropped). Returns when it is gone, at once
    /// for an unknown name.
    pub(crate) async fn stop(&self, name: &InstanceName, grace: Duration) {
        let gone = {
            let state = self.shared.lock();
            let Some(instance) = state.instances.get(name) else {
                return;
            };
            instance.request_stop(grace);
            instance.gone.clone()
        };
        gone.cancelled().await;
    }

    /// Processes of a pool (or all when `None`), oldest first.
    pub(crate) fn list(&self, pool: Option<&str>) -> Vec<ProcessInfo> {
        let state = self.shared.lock();
        let mut instances: Vec<(u64, ProcessInfo)> = state
            .instances
            .iter()
            .filter(|(_, instance)| pool.is_none_or(|pool| instance.pool == pool))
            .map(|(name, instance)| {
                let info = ProcessInfo {
                    name: name.clone(),
                    pool: instance.pool.clone(),
                    pid: instance.pid,
                    started_at: instance.started_at,
                    restarts: instance.restarts,
                };
                (instance.seq, info)
            })
            .collect();
        drop(state);
        instances.sort_by_key(|(seq, _)| *seq);
        instances.into_iter().map(|(_, info)| info).collect()
    }

    /// Stops every process (SIGTERM to all at once, waits up to `grace`, SIGKILL to the rest)
    /// and waits until they are all gone; spawns nothing afterwards.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        let count = {
            let mut state = self.shared.lock();
            state.closed = true;
            for instance in state.instances.values() {
                instance.request_stop(grace);
            }
            state.instances.len()
        };
        tracing::info!(
            count,
            grace_ms = grace.as_millis(),
            "Stopping local processes"
        );
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        tracing::info!("Local processes stopped");
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, event: ProcessEvent) {
        // Nobody listening is not an error: the events are informational.
        let _ = self.events.send(event);
    }

    fn update(&self, name: &InstanceName, f: impl FnOnce(&mut Instance)) {
        if let Some(instance) = self.lock().instances.get_mut(name) {
            f(instance);
        }
    }
}

/// The supervising task of one instance.
struct Run {
    shared: Arc<Shared>,
    backoff: Backoff,
    pool: String,
    name: InstanceName,
    spec: ProcessSpec,
    stop: watch::Receiver<Option<Duration>>,
}

impl Run {
    #[tracing::instrument(name = "local_process", skip_all, fields(pool = %self.pool, instance = %self.name))]
    async fn supervise(mut self) {
        let mut failures = 0;
        let mut restarts = 0;
        loop {
            if self.stop.borrow().is_some() {
                break;
            }
            // Secrets are read at every start, so a restart picks up a rotated value; one that
            // cannot be read counts as a failed start (and is retried with backoff).
            let secrets = match &self.spec.secrets {
                Some(secrets) => secrets.resolve().await,
                None => Ok(Vec::new()),
            };
            let outcome = match secrets.map(|secrets| self.command(&secrets).spawn()) {
                Ok(Ok(child)) => self.run(child, restarts).await,
                Ok(Err(e)) => {
                    // Arguments and environment are not logged: they may carry keys.
                    tracing::warn!(program = %self.spec.program.display(), error = %e, "Process failed to start");
                    Outcome::Exited {
                        status: format!("failed to start: {e}"),
                        ran_for: Duration::ZERO,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Process not started: a secret of its environment is unavailable");
                    Outcome::Exited {
                        status: format!("not started: {e}"),
                        ran_for: Duration::ZERO,
                    }
                }
            };
            let Outcome::Exited { status, ran_for } = outcome else {
                break;
            };
            let (quick_exits, delay) = self.backoff.after_exit(failures, ran_for);
            failures = quick_exits;
            self.shared
                .update(&self.name, |instance| instance.pid = None);
            tracing::warn!(%status, ran_for_ms = ran_for.as_millis(), restart_in_ms = delay.as_millis(), "Process exited; restarting");
            self.shared.emit(ProcessEvent::Exited {
                pool: self.pool.clone(),
                name: self.name.clone(),
                status,
                restart_in: Some(delay),
            });
            tokio::select! {
                biased;
                _ = stop_requested(&mut self.stop) => {
                    tracing::info!("Stopped while waiting to restart");
                    break;
                }
                () = tokio::time::sleep(delay) => {}
            }
            restarts += 1;
        }
        self.shared.lock().instances.remove(&self.name);
        self.shared.emit(ProcessEvent::Stopped {
            pool: self.pool.clone(),
            name: self.name.clone(),
        });
    }

    fn command(&self, secrets: &[(String, secrecy::SecretString)]) -> Command {
        use secrecy::ExposeSecret;
        let mut command = Command::new(&self.spec.program);
        command
            .args(&self.spec.args)
            // Nothing of ours but the allowlist: our environment holds the master key.
            .env_clear()
            .envs(inherited_env(std::env::vars_os()))
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .envs(secrets.iter().map(|(k, v)| (k, v.expose_secret())))
            .env(INSTANCE_NAME_ENV, self.name.as_str())
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            // If this task is dropped (the runtime ends), the process dies with it.
            .kill_on_drop(true);
        if let Some(dir) = &self.spec.log_dir {
            let path = dir.join(format!("{}.log", self.name));
            let opened = std::fs::create_dir_all(dir).and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
            });
            match opened.and_then(|file| Ok((file.try_clone()?, file))) {
                Ok((out, err)) => {
                    command.stdout(out).stderr(err);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "Cannot open the agent's log file; its output goes to ours");
                }
            }
        }
        command
    }

    /// Runs one started process until it exits or a stop is requested.
    async fn run(&mut self, mut child: Child, restarts: u32) -> Outcome {
        let started = tokio::time::Instant::now();
        let Some(pid) = child.id() else {
            // Already reaped, which `spawn` does not do; report whatever status it had.
            return Outcome::Exited {
                status: describe(child.wait().await),
                ran_for: Duration::ZERO,
            };
        };
        self.shared.update(&self.name, |instance| {
            instance.pid = Some(pid);
            instance.restarts = restarts;
        });
        tracing::info!(pid, restarts, program = %self.spec.program.display(), "Process started");
        self.shared.emit(ProcessEvent::Started {
            pool: self.pool.clone(),
            name: self.name.clone(),
            pid,
        });
        tokio::select! {
            status = child.wait() => Outcome::Exited {
                status: describe(status),
                ran_for: started.elapsed(),
            },
            grace = stop_requested(&mut self.stop) => {
                let status = terminate(&mut child, pid, grace).await;
                tracing::info!(pid, %status, "Process stopped");
                self.shared.update(&self.name, |instance| instance.pid = None);
                self.shared.emit(ProcessEvent::Exited {
                    pool: self.pool.clone(),
                    name: self.name.clone(),
                    status,
                    restart_in: None,
                });
                Outcome::Stopped
            }
        }
    }
}

/// The variables of `environment` (ours) that a spawned process inherits: [`INHERITED_ENV`] and
/// the `LC_*` locale categories.
fn inherited_env(
    environment: impl Iterator<Item = (OsString, OsString)>,
) -> impl Iterator<Item = (OsString, OsString)> {
    environment.filter(|(name, _)| {
        name.to_str().is_some_and(|name| {
            INHERITED_ENV.contains(&name)
                || name
                    .strip_prefix("LC_")
                    .is_some_and(|category| !category.is_empty())
        })
    })
}

/// Resolves with the grace period once a stop is requested (at once if it already was).
async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    let grace = stop
        .wait_for(Option::is_some)
        .await
        .map(|grace| grace.unwrap_or_default());
    match grace {
        Ok(grace) => grace,
        // The sender lives in the instance's entry, which only this task removes.
        Err(_) => std::future::pending().await,
    }
}

/// SIGTERM, up to `grace` for the process to exit, then SIGKILL; returns its exit status once
/// reaped. The child has not been reaped yet, so `pid` cannot have been reused.
async fn terminate(child: &mut Child, pid: u32, grace: Duration) -> String {
    match i32::try_from(pid) {
        Ok(raw) => {
            if let Err(e) = signal::kill(Pid::from_raw(raw), Signal::SIGTERM) {
                tracing::debug!(pid, error = %e, "SIGTERM not delivered");
            }
        }
        Err(_) => tracing::warn!(pid, "Pid out of range; skipping SIGTERM"),
    }
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return describe(status);
    }
    tracing::warn!(
        pid,
        grace_ms = grace.as_millis(),
        "Process ignored SIGTERM; sending SIGKILL"
    );
    if let Err(e) = child.start_kill() {
        tracing::warn!(pid, error = %e, "SIGKILL not delivered");
    }
    describe(child.wait().await)
}

/// `exit status 1`, `signal 9 (SIGKILL)`.
fn describe(status: std::io::Result<ExitStatus>) -> String {
    let status = match status {
        Ok(status) => status,
        Err(e) => return format!("unknown (wait failed: {e})"),
    };
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(number) => match Signal::try_from(number) {
            Ok(signal) => format!("signal {number} ({})", signal.as_str()),
            Err(_) => format!("signal {number}"),
        },
        None => status.to_string(),
    }
}
