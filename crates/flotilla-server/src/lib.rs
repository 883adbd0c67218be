//! The control plane shell: the HTTP API, the scheduler that moves tasks from the queue to agent
//! instances, and the fleet registry. Decisions are delegated to flotilla-core; persistence to
//! flotilla-store. Every long-running loop is started and stopped by [`start`] and
//! [`RunningServer::stop`], never detached.

#![warn(unreachable_pub)]

pub mod agent_clients;
pub(crate) mod alerts;
pub(crate) mod api;
pub mod app;
pub(crate) mod audit;
pub mod auth;
pub mod clock;
pub(crate) mod cluster;
pub mod fleet;
pub(crate) mod gateway;
pub mod leader;
pub mod leadership;
pub(crate) mod notify;
pub(crate) mod outbound;
pub(crate) mod replicas;
pub mod scheduler;
pub mod telemetry;
pub(crate) mod tls;
pub mod vault;
pub(crate) mod waiters;

use crate::app::AppState;
use crate::auth::bootstrap::{BootstrapError, NewKey, create_internal_key, ensure_admin_key};
use crate::clock::{Clock, SystemClock};
use crate::fleet::provisioners::{LocalContext, Provisioners};
use crate::fleet::registry::Registry;
use crate::fleet::wakers::Wakers;
use crate::scheduler::dispatcher::Dispatchers;
use flotilla_core::auth::Role;
use flotilla_core::config::Config;
use flotilla_core::config::Provisioner;
use flotilla_core::id::TenantId;
use flotilla_store::{DynStore, StoreError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for in-flight attempts before leaving them to lease expiry.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store failed at start-up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bootstrap key could not be set up.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// The listener could not be bound or served.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The audit log could not be re-anchored.
    #[error("audit log: {0}")]
    Audit(#[from] audit::AuditError),
    /// The vault's master key or backend could not be set up.
    #[error("vault: {0}")]
    Vault(#[from] vault::VaultError),
    /// The HTTP client for agents could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// `[agents_tls]` could not be used, or the HTTP client for agents could not be built.
    #[error(transparent)]
    AgentsHttp(#[from] agent_clients::AgentClientError),
    /// The `[tls]` certificate, key or client CA could not be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A model provider's HTTP client could not be built.
    #[error(transparent)]
    Gateway(#[from] gateway::GatewayBuildError),
    /// The `[telemetry.otlp]` exporter could not be set up.
    #[error(transparent)]
    Traces(#[from] telemetry::traces::TracesError),
}

/// Start-up options that are not configuration.
#[derive(Default)]
pub struct StartOptions {
    /// `FLOTILLA_BOOTSTRAP_ADMIN_KEY`: an admin key to ensure exists.
    pub bootstrap_key: Option<String>,
    /// A clock to use instead of the system clock (tests).
    pub clock: Option<Arc<dyn Clock>>,
    /// The `flotilla` binary, which local pools run as `flotilla agent` unless they name a
    /// command.
    pub agent_program: Option<std::path::PathBuf>,
}

/// A started control plane.
pub struct RunningServer {
    /// The bound API address.
    pub addr: SocketAddr,
    /// The admin key created at this start, if one was (print it once).
    pub new_admin_key: Option<NewKey>,
    state: AppState,
    http: JoinHandle<()>,
    writers: TaskTracker,
    stop_writers: CancellationToken,
}

/// Name of the key the local provisioner's agents register with (one per start).
const LOCAL_AGENT_KEY: &str = "local provisioner";

/// Opens nothing itself: takes a migrated store, binds the listener and starts every loop.
pub async fn start(
    config: Config,
    store: DynStore,
    options: StartOptions,
) -> Result<RunningServer, ServerError> {
    let clock = options.clock.unwrap_or_else(|| Arc::new(SystemClock));
    let now = clock.now();
    let new_admin_key =
        ensure_admin_key(store.as_ref(), options.bootstrap_key.as_deref(), now).await?;

    let shutdown = CancellationToken::new();
    let stop_writers = CancellationToken::new();
    let writers = TaskTracker::new();
    // What the other control planes on the database are told (nothing on SQLite).
    let owner: Arc<str> = format!("flotilla-{}", uuid::Uuid::now_v7()).into();
    let (cluster, cluster_sender) =
        cluster::channel(store.clone(), owner.clone(), stop_writers.clone());
    writers.spawn(cluster_sender);
    let wakers = Arc::new(Wakers::new(cluster.clone()));
    let waiters = Arc::new(waiters::Waiters::new(cluster.clone()));
    let config = Arc::new(config);
    let metrics = Arc::new(telemetry::metrics::Metrics::new());
    let leadership = Arc::new(leadership::Leadership::default());
    let (events, event_writer) = fleet::events::channel(
        store.clone(),
        metrics.clone(),
        config.fleet.events_retention,
        leadership.clone(),
        stop_writers.clone(),
    );
    writers.spawn(event_writer);
    let registry = Arc::new(Registry::new(
        wakers.clone(),
        events.clone(),
        config.clone(),
    ));
    let mut known = store.list_agents().await?;
    // Instances a previous start's local provisioner spawned died with it (they watch their
    // parent): forget them rather than wait for their heartbeats to time out.
    let (stale, kept): (Vec<_>, Vec<_>) = known.drain(..).partition(|a| {
        a.metadata.get("instance").is_some()
            && config.pools.iter().any(|p| {
                p.name == a.agent_type && matches!(p.provisioner, Provisioner::Local { .. })
            })
    });
    for agent in stale {
        store.delete_agent(agent.id).await?;
    }
    registry.load(kept, now);

    // TLS files are read before anything listens, so that a bad file stops the start.
    let tls_config = config.tls.as_ref().map(tls::server_config).transpose()?;
    // So are `[agents_tls]`'s, which the clients for agents (dispatch, health checks) use.
    let agents_http = Arc::new(agent_clients::AgentClients::new(
        config.agents_tls.as_ref(),
        config.agents_egress.clone(),
    )?);
    let scheme = if tls_config.is_some() {
        "https"
    } else {
        "http"
    };
    // The listener is bound first: local agents need its address.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_context = if config
        .pools
        .iter()
        .any(|p| matches!(p.provisioner, Provisioner::Local { .. }))
    {
        // The agents a previous start spawned died with it; so does their key. (One control
        // plane runs local pools: several replicas would each spawn their own agents.)
        for old in store.list_api_keys(Some(TenantId::DEFAULT)).await? {
            if old.name == LOCAL_AGENT_KEY && old.revoked_at.is_none() {
                store.revoke_api_key(None, &old.id, now).await?;
            }
        }
        let agent_key =
            create_internal_key(store.as_ref(), Role::Agent, LOCAL_AGENT_KEY, now).await?;
        let host = if addr.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            addr.ip()
        };
        Some(LocalContext {
            agent_program: options.agent_program.clone(),
            // With `[tls]` the listener speaks only HTTPS; the pool's `env` then gives its agents
            // FLOTILLA_CA_FILE (and a client certificate when `client_ca_file` is set).
            control_plane_url: format!(
                "{}://{}",
                if config.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                SocketAddr::new(host, addr.port())
            ),
            agent_key,
            log_dir: config.fleet.agent_log_dir.clone(),
        })
    } else {
        None
    };
    let vault = Arc::new(vault::Vault::open(
        &config,
        store.clone(),
        &vault::ProcessEnvironment,
    )?);
    let provisioners = Provisioners::new(
        local_context,
        &writers,
        fleet::provisioners::ProvisionerHandles {
            events: events.clone(),
            registry: registry.clone(),
            store: store.clone(),
            clock: clock.clone(),
            stop: stop_writers.clone(),
            vault: vault.clone(),
            drain_timeout: config.fleet.drain_timeout,
            shutdown: shutdown.clone(),
        },
    );

    let (intake, intake_writer) = scheduler::intake::channel(
        store.clone(),
        wakers.clone(),
        metrics.clone(),
        stop_writers.clone(),
    );
    let traces = telemetry::traces::Traces::install(config.telemetry.otlp.as_ref())?.map(Arc::new);
    let (completions, completion_writer) = scheduler::completion::channel(
        store.clone(),
        scheduler::completion::Observers {
            waiters: waiters.clone(),
            wakers: wakers.clone(),
            metrics: metrics.clone(),
            traces: traces.clone(),
            clock: clock.clone(),
        },
        stop_writers.clone(),
    );
    writers.spawn(intake_writer);
    writers.spawn(completion_writer);

    let (ledger, ledger_writer) = gateway::ledger::channel(
        store.clone(),
        metrics.clone(),
        config.gateway.usage_flush,
        leadership.clone(),
        stop_writers.clone(),
    );
    writers.spawn(ledger_writer);
    let attempts: Arc<auth::attempts::LiveAttempts> = Arc::default();
    let recent: Arc<telemetry::recent::Recent> = Arc::default();
    let task_token_key = Arc::new(flotilla_core::task_token::TokenKey::new(
        vault.master().derive("task-token"),
    ));
    let gateway_url: Arc<str> = format!("{scheme}://{}/v1", reachable(addr)).into();
    let scheduler = Arc::new(scheduler::Scheduler {
        config: config.clone(),
        store: store.clone(),
        clock: clock.clone(),
        registry: registry.clone(),
        wakers: wakers.clone(),
        metrics: metrics.clone(),
        recent: recent.clone(),
        attempts: attempts.clone(),
        intake,
        completions,
        dispatchers: Dispatchers::new(shutdown.clone()),
        queue_limits: Default::default(),
        agents: agents_http.clone(),
        traces: traces.clone(),
        task_token_key: task_token_key.clone(),
        gateway_url: gateway_url.clone(),
        owner: owner.clone(),
        leadership: leadership.clone(),
        waiters: waiters.clone(),
        shutdown: shutdown.clone(),
    });
    let notifications = Arc::new(notify::Notifications {
        webhooks: config.alerting.webhooks.clone(),
        emails: config.alerting.emails.clone(),
        http: outbound::client_builder()
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(agent_clients::AgentClientError::Build)?,
        // Deliveries are waited for at shutdown with the attempts.
        deliveries: scheduler.dispatchers.attempts.clone(),
        events: events.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
    });
    let gateway = Arc::new(gateway::Gateway::new(
        config.gateway.clone(),
        ledger,
        gateway::budgets::Budgets::new(store.clone(), owner.clone()),
        gateway::GatewayHandles {
            store: store.clone(),
            vault: vault.clone(),
            clock: clock.clone(),
            metrics: metrics.clone(),
            recent: recent.clone(),
            events: events.clone(),
            notifications: notifications.clone(),
            traces: traces.clone(),
        },
    )?);
    let keys: Arc<auth::KeyCache> = Arc::default();
    let limits = Arc::new(auth::limits::RateLimiters::new(
        config.rate_limits.auth_failures,
        config.rate_limits.auth_failures_ipv6_prefix,
    ));
    let audit = Arc::new(audit::Audit::new(
        store.clone(),
        clock.clone(),
        vault.master().audit_key(),
        vault.master().audit_keys(),
    ));
    audit.reanchor_if_needed().await?;
    writers.spawn(audit::flush_failures(audit.clone(), stop_writers.clone()));
    let access = Arc::new(auth::Access {
        rate_limits: config.rate_limits,
        store: store.clone(),
        clock: clock.clone(),
        keys: keys.clone(),
        limits: limits.clone(),
        attempts: attempts.clone(),
        task_token_key: task_token_key.clone(),
        audit: audit.clone(),
    });
    let state = AppState::new(app::Services {
        gateway,
        vault: vault.clone(),
        config: config.clone(),
        store: store.clone(),
        clock: clock.clone(),
        registry: registry.clone(),
        events,
        provisioners: provisioners.clone(),
        scaling: Arc::default(),
        metrics: metrics.clone(),
        recent,
        alerts: Arc::default(),
        wakers,
        waiters,
        keys,
        access,
        attempts,
        audit,
        limits,
        scheduler: scheduler.clone(),
        agents: agents_http,
        traces,
        owner,
        cluster,
        leadership,
        shutdown: shutdown.clone(),
    });

    // Dispatchers for every type that has a pool, an instance or queued work.
    let mut types: Vec<String> = config.pools.iter().map(|p| p.name.clone()).collect();
    types.extend(registry.types());
    types.extend(store.queued_by_type(None).await?.into_keys());
    for agent_type in types {
        scheduler.ensure(&agent_type);
    }
    writers.spawn(scheduler::lease::run(scheduler.clone(), shutdown.clone()));
    let fleet = fleet::Fleet {
        config: config.clone(),
        store: store.clone(),
        clock: clock.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        agents: state.agents.clone(),
        scaling: state.scaling.clone(),
        events: state.events.clone(),
    };
    writers.spawn(fleet::heartbeat::run(fleet.clone(), shutdown.clone()));
    writers.spawn(fleet::health::run(fleet.clone(), shutdown.clone()));
    // The leader lease; the loops that must run once per deployment run under it.
    writers.spawn(leader::run(
        leader::Leader {
            leases: store.clone(),
            announcements: store.clone(),
            shared_store: store.topology().is_shared(),
            owner: state.owner.clone(),
            ttl: config.leader_lease,
            clock: clock.clone(),
            leadership: state.leadership.clone(),
            metrics: metrics.clone(),
            events: state.events.clone(),
            on_replicas: {
                let (registry, limits) = (registry.clone(), state.limits.clone());
                Box::new(move |n| {
                    registry.set_replicas(n);
                    limits.set_replicas(n);
                })
            },
        },
        shutdown.clone(),
    ));
    writers.spawn(replicas::run(state.clone(), shutdown.clone()));
    writers.spawn(leadership::singleton(
        state.leadership.clone(),
        shutdown.clone(),
        {
            let alerts = Arc::new(alerts::Alerts {
                config: config.clone(),
                store: store.clone(),
                clock: clock.clone(),
                engine: state.alerts.clone(),
                registry: registry.clone(),
                recent: state.recent.clone(),
                metrics: metrics.clone(),
                events: state.events.clone(),
                limits: state.limits.clone(),
                provisioners: provisioners.clone(),
                gateway: state.gateway.clone(),
                notifications,
                cluster: state.cluster.clone(),
            });
            move |term| alerts::run(alerts.clone(), term)
        },
    ));
    writers.spawn(leadership::singleton(
        state.leadership.clone(),
        shutdown.clone(),
        move |term| fleet::autoscaler::run(fleet.clone(), provisioners.clone(), term),
    ));
    if let Some(retention) = config.audit_retention {
        let audit = state.audit.clone();
        let interval = config.audit_prune_interval;
        writers.spawn(leadership::singleton(
            state.leadership.clone(),
            shutdown.clone(),
            move |term| audit::retention(audit.clone(), retention, interval, term),
        ));
    }

    let router = api::router(state.clone());
    let graceful = shutdown.clone();
    let limits = connection_limits(&config);
    let http = if let Some(tls_config) = tls_config {
        let listener = tls::listen(listener, tls_config, &limits, &writers, shutdown.clone())
            .map_err(|source| ServerError::Listen { addr, source })?;
        tokio::spawn(flotilla_tls::serve(listener, router, limits, graceful))
    } else {
        plain_http(listener, router, limits, graceful)
    };
    tracing::info!(%addr, tls = config.tls.is_some(), store = %store.topology(), owner = %state.owner, "Control plane listening");
    Ok(RunningServer {
        addr,
        new_admin_key,
        state,
        http,
        writers,
        stop_writers,
    })
}

/// The connection bounds of `[server]` (docs/security.md, "Threat model").
fn connection_limits(config: &Config) -> flotilla_tls::ConnectionLimits {
    flotilla_tls::ConnectionLimits {
        max_connections: config.connections.max_connections,
        header_read_timeout: config.connections.header_read_timeout,
        max_tls_handshakes: config.connections.max_tls_handshakes,
    }
}

/// Serves `router` on `listener` in plain HTTP until `graceful` is cancelled.
fn plain_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: flotilla_tls::ConnectionLimits,
    graceful: CancellationToken,
) -> JoinHandle<()> {
    // Answers go out at once (no Nagle delay on keep-alive connections, docs/design.md §7).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "Could not set TCP_NODELAY");
        }
    });
    tokio::spawn(flotilla_tls::serve(listener, router, limits, graceful))
}

impl RunningServer {
    /// A token that stops the server when cancelled (e.g. on SIGTERM).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// The shared state (for in-process tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Waits until the shutdown token is cancelled, then stops in order: stop accepting requests
    /// and claiming tasks, let in-flight attempts finish (up to [`SHUTDOWN_GRACE`]), write every
    /// pending submission and result, stop the loops.
    pub async fn wait(self) {
        self.state.shutdown.cancelled().await;
        if let Err(e) = self.http.await {
            tracing::error!(error = %e, "HTTP server task failed");
        }
        self.state.scheduler.dispatchers.stopped().await;
        let attempts = &self.state.scheduler.dispatchers.attempts;
        attempts.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, attempts.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = attempts.len(),
                "Attempts still running after the grace period; their leases will expire and they will re-run"
            );
        }
        // Streamed model answers being relayed end (their usage is recorded before the ledger
        // stops below).
        let streams = &self.state.gateway.streams;
        streams.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, streams.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                streams = streams.len(),
                "Model streams still open after the grace period; their usage is recorded as far as it went"
            );
        }
        // Local agents stop after the attempts they ran have ended.
        self.state.provisioners.shutdown().await;
        self.stop_writers.cancel();
        self.writers.close();
        self.writers.wait().await;
        // Last: the completion writer above recorded the final `task.complete` spans.
        if let Some(traces) = &self.state.traces {
            traces.shutdown().await;
        }
        tracing::info!("Control plane stopped");
    }

    /// Cancels the shutdown token and waits for the orderly stop.
    pub async fn stop(self) {
        self.state.shutdown.cancel();
        self.wait().await;
    }
}

/// `addr`, with the loopback address in place of an unspecified one (which cannot be connected
/// to).
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::IpAddr::from([127, 0, 0, 1]), addr.port())
    } else {
        addr
    }
}
