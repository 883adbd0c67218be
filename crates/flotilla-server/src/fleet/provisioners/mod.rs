//! Provisioners (docs/design.md §5): how a pool's size becomes running instances.
//!
//! - `static`: instances register themselves; the autoscaler only recommends.
//! - `local`: agent processes on this machine, supervised by [`local::LocalSupervisor`].
//! - `kubernetes`: one Deployment per pool through `flotilla-kube`.
//!
//! Scale-down is the same for every provisioner that can do it: the chosen instances are drained
//! in the registry (no new work), their in-flight tasks finish (up to `[fleet] drain_timeout_ms`),
//! and only then is the instance stopped.

mod kubernetes;
pub(crate) mod local;

use crate::fleet::registry::Registry;
use flotilla_core::agent::AgentInstance;
use flotilla_core::autoscale::{Victim, choose_victims};
use flotilla_core::config::{Pool, Provisioner};
use flotilla_core::event::EventKind;
use flotilla_core::id::AgentId;
use local::{InstanceName, LocalSupervisor, ProcessEvent, ProcessSpec};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// How long a stopped local agent gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What local agent processes need to reach the control plane.
#[derive(Clone)]
pub(crate) struct LocalContext {
    /// The program of the built-in agent (this binary), run as `<program> agent …`.
    pub agent_program: Option<PathBuf>,
    /// URL of this control plane's API.
    pub control_plane_url: String,
    /// API key with role `agent` for the processes (never logged).
    pub agent_key: String,
    /// Where the processes' output goes (`None`: the control plane's stdout and stderr).
    pub log_dir: Option<PathBuf>,
}

/// The provisioners of this control plane.
/// What the provisioners need, built by the composition root.
pub(crate) struct ProvisionerHandles {
    /// Where process and Kubernetes events are recorded.
    pub events: crate::fleet::events::EventSink,
    /// Whose instances are drained before their processes stop.
    pub registry: Arc<Registry>,
    /// Where instances of exited processes are deleted.
    pub store: flotilla_store::DynStore,
    pub clock: Arc<dyn crate::clock::Clock>,
    /// Ends the loop that turns process events into fleet events.
    pub stop: tokio_util::sync::CancellationToken,
    /// Resolves the `secret://` values of pools' environments.
    pub vault: Arc<crate::vault::Vault>,
    /// `[fleet] drain_timeout`: the longest a drain before scale-down waits.
    pub drain_timeout: Duration,
    /// Cancelled when the server begins to shut down (drains stop waiting).
    pub shutdown: tokio_util::sync::CancellationToken,
}

pub(crate) struct Provisioners {
    /// Whose instances are drained before their processes stop.
    registry: Arc<Registry>,
    clock: Arc<dyn crate::clock::Clock>,
    /// Resolves the `secret://` values of pools' environments.
    vault: Arc<crate::vault::Vault>,
    /// Where the Kubernetes provisioner says what it did.
    events: crate::fleet::events::EventSink,
    /// `[fleet] drain_timeout`: the longest a drain before scale-down waits.
    drain_timeout: Duration,
    /// Cancelled when the server begins to shut down (drains stop waiting).
    shutdown: tokio_util::sync::CancellationToken,
    local: LocalSupervisor,
    kube: kubernetes::Kubernetes,
    context: Option<LocalContext>,
    /// Local instances being drained and stopped: not counted in the pool's size.
    stopping: Mutex<HashSet<InstanceName>>,
    tasks: TaskTracker,
}

/// The agent id of a registered local instance: its registration carries the name.
fn registered_as(registry: &Registry, pool: &str, name: &InstanceName) -> Option<AgentId> {
    platform_instances(registry, pool)
        .into_iter()
        .find(|a| instance_name(a) == Some(name.as_str()))
        .map(|a| a.id)
}

/// The platform's instances of a pool: only those can be the provisioner's own (a tenant's agent
/// could claim any instance name in its metadata).
fn platform_instances(registry: &Registry, pool: &str) -> Vec<AgentInstance> {
    registry
        .list_pool(pool)
        .into_iter()
        .filter(|a| a.tenant_id.is_none())
        .collect()
}

fn instance_name(agent: &AgentInstance) -> Option<&str> {
    agent.metadata.get("instance").and_then(|v| v.as_str())
}

impl Provisioners {
    /// Provisioners whose process events are turned into fleet events by a loop on `tracker`.
    pub(crate) fn new(
        context: Option<LocalContext>,
        tracker: &TaskTracker,
        handles: ProvisionerHandles,
    ) -> Arc<Self> {
        let ProvisionerHandles {
            events: state_events,
            registry,
            store,
            clock,
            stop,
            vault,
            drain_timeout,
            shutdown,
        } = handles;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let this = Arc::new(Self {
            registry: registry.clone(),
            clock: clock.clone(),
            vault,
            events: state_events.clone(),
            drain_timeout,
            shutdown,
            local: LocalSupervisor::new(tx),
            kube: kubernetes::Kubernetes::default(),
            context,
            stopping: Mutex::default(),
            tasks: TaskTracker::new(),
        });
        let me = this.clone();
        tracker.spawn(async move {
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    event = rx.recv() => match event {
                        Some(event) => event,
                        None => return,
                    },
                };
                let now = clock.now();
                let (pool, message, exited) = match &event {
                    ProcessEvent::Started { pool, name, pid } => {
                        (pool, format!("process {name} started (pid {pid})"), None)
                    }
                    ProcessEvent::Exited {
                        pool,
                        name,
                        status,
                        restart_in,
                    } => {
                        let what = match restart_in {
                            Some(d) => format!("; restarting in {} ms", d.as_millis()),
                            None => String::new(),
                        };
                        (
                            pool,
                            format!("process {name} exited: {status}{what}"),
                            restart_in.map(|_| name.clone()),
                        )
                    }
                    ProcessEvent::Stopped { pool, name } => {
                        me.stopping_done(name);
                        (pool, format!("process {name} stopped"), Some(name.clone()))
                    }
                };
                state_events.emit(now, EventKind::Provisioner, pool, None, None, message);
                // A process that is gone cannot finish its tasks: fail them over at once rather
                // than at the next heartbeat timeout.
                if let Some(name) = exited
                    && let Some(id) = registered_as(&registry, pool, &name)
                    && registry.forget(id, now, &format!("its process {name} is gone"))
                    && let Err(e) = store.delete_agent(id).await
                {
                    tracing::warn!(agent_id = %id, error = %e, "Could not delete the instance");
                }
            }
        });
        this
    }

    fn stopping_done(&self, name: &InstanceName) {
        if let Ok(mut s) = self.stopping.lock() {
            s.remove(name);
        }
    }

    fn is_stopping(&self, name: &InstanceName) -> bool {
        self.stopping.lock().is_ok_and(|s| s.contains(name))
    }

    /// The pool's current size as its provisioner counts it; `None` for static pools (the
    /// registry's count applies).
    pub(crate) fn size(&self, pool: &Pool) -> Option<u32> {
        match pool.provisioner {
            Provisioner::Local { .. } => Some(
                self.local
                    .list(Some(&pool.name))
                    .iter()
                    .filter(|p| !self.is_stopping(&p.name))
                    .count() as u32,
            ),
            Provisioner::Kubernetes(_) => self.kube.size(&pool.name),
            Provisioner::Static => None,
        }
    }

    /// Brings a pool to `to` instances. Local: starts processes, or drains and stops the idle
    /// (then oldest) ones. Kubernetes: applies the pool's Deployment with `to` replicas (the
    /// Deployment's own rollout stops pods; agents drain on SIGTERM). Static: nothing to do.
    pub(crate) fn scale(&self, pool: &Pool, to: u32) {
        let command = match &pool.provisioner {
            Provisioner::Local { command } => command,
            Provisioner::Kubernetes(settings) => {
                let work = self.kube.scale(
                    pool,
                    settings,
                    to,
                    &self.vault,
                    self.events.clone(),
                    self.clock.clone(),
                );
                self.tasks.spawn(work);
                return;
            }
            Provisioner::Static => return,
        };
        let Some(context) = &self.context else {
            tracing::warn!(pool = %pool.name, "The local provisioner has no agent key; not scaling");
            return;
        };
        let current = self.size(pool).unwrap_or(0);
        if to > current {
            for _ in current..to {
                match spec(pool, command, context, &self.vault) {
                    Some(spec) => {
                        self.local.spawn(&pool.name, spec);
                    }
                    None => {
                        tracing::error!(pool = %pool.name, "No command to run: set `command` for this pool");
                        return;
                    }
                }
            }
        } else if to < current {
            self.scale_down(pool, (current - to) as usize);
        }
    }

    fn scale_down(&self, pool: &Pool, n: usize) {
        let processes: Vec<_> = self
            .local
            .list(Some(&pool.name))
            .into_iter()
            .filter(|p| !self.is_stopping(&p.name))
            .collect();
        let registered = platform_instances(&self.registry, &pool.name);
        let id_of = |name: &InstanceName| {
            registered
                .iter()
                .find(|a| instance_name(a) == Some(name.as_str()))
        };
        // Processes that never registered have no work: they go first; then the registry's
        // choice among registered ones (idle first, oldest first).
        let mut victims: Vec<(InstanceName, Option<AgentId>)> = processes
            .iter()
            .filter(|p| id_of(&p.name).is_none())
            .map(|p| (p.name.clone(), None))
            .take(n)
            .collect();
        let candidates: Vec<Victim<usize>> = processes
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                id_of(&p.name).map(|a| Victim {
                    id: i,
                    created_at: a.created_at,
                    load: a.load,
                })
            })
            .collect();
        for i in choose_victims(&candidates, n - victims.len()) {
            let name = processes[i].name.clone();
            let id = id_of(&name).map(|a| a.id);
            victims.push((name, id));
        }
        for (name, id) in victims {
            if let Ok(mut s) = self.stopping.lock() {
                s.insert(name.clone());
            }
            let drain_work = id.map(|id| {
                drain(
                    self.registry.clone(),
                    self.clock.clone(),
                    self.drain_timeout,
                    self.shutdown.clone(),
                    id,
                )
            });
            let local = self.local.clone();
            self.tasks.spawn(async move {
                if let Some(drain_work) = drain_work {
                    drain_work.await;
                }
                local.stop(&name, STOP_GRACE).await;
            });
        }
    }

    /// Stops every local process (after in-flight drains) and waits for them.
    pub(crate) async fn shutdown(&self) {
        self.tasks.close();
        self.local.shutdown(STOP_GRACE).await;
        self.tasks.wait().await;
    }

    /// Local processes, for `GET /v1/pools`.
    pub(crate) fn processes(&self, pool: &str) -> Vec<local::ProcessInfo> {
        self.local.list(Some(pool))
    }
}

/// Takes an instance out of rotation and waits until its in-flight tasks end (or the drain
/// timeout passes).
async fn drain(
    registry: Arc<Registry>,
    clock: Arc<dyn crate::clock::Clock>,
    drain_timeout: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    id: AgentId,
) {
    let started = tokio::time::Instant::now();
    let now = clock.now();
    if registry.drain(id, now, "chosen by scale-down").is_none() {
        return;
    }
    loop {
        let load = registry.get(id).map_or(0, |a| a.load);
        if load == 0 || started.elapsed() >= drain_timeout {
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// The process to run for one instance of a local pool.
fn spec(
    pool: &Pool,
    command: &[String],
    context: &LocalContext,
    vault: &Arc<crate::vault::Vault>,
) -> Option<ProcessSpec> {
    let (program, args) = match command.split_first() {
        Some((program, args)) => (PathBuf::from(program), args.to_vec()),
        None => (
            context.agent_program.clone()?,
            vec![
                "agent".to_owned(),
                "--type".to_owned(),
                pool.name.clone(),
                "--capacity".to_owned(),
                pool.capacity.to_string(),
            ],
        ),
    };
    // `secret://` values are resolved when each process starts, never stored in the spec.
    let (mut env, secrets) = crate::vault::EnvSecrets::split(vault, &pool.env);
    env.push(("FLOTILLA_KEY".to_owned(), context.agent_key.clone()));
    env.push((
        "FLOTILLA_CONTROL_PLANE".to_owned(),
        context.control_plane_url.clone(),
    ));
    env.push(("AGENT_TYPE".to_owned(), pool.name.clone()));
    Some(ProcessSpec {
        program,
        args,
        env,
        secrets,
        log_dir: context.log_dir.clone(),
    })
}
