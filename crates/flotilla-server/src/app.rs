//! The state shared by handlers and background loops.

use crate::auth::KeyCache;
use crate::clock::Clock;
use crate::fleet::autoscaler::Scaling;
use crate::fleet::events::EventSink;
use crate::fleet::provisioners::Provisioners;
use crate::fleet::registry::Registry;
use crate::fleet::wakers::Wakers;
use crate::scheduler::Scheduler;
use crate::waiters::Waiters;
use flotilla_core::config::Config;
use flotilla_store::DynStore;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Everything a handler or loop needs. Cloning it (axum does, for every extractor that takes it)
/// copies one pointer: the services live in one shared [`Services`].
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// The state of a server built from `services`.
    pub fn new(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services and handles of one control plane, built once by [`crate::start`].
pub struct Services {
    pub(crate) config: Arc<Config>,
    pub(crate) store: DynStore,
    pub clock: Arc<dyn Clock>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) events: EventSink,
    pub(crate) provisioners: Arc<Provisioners>,
    pub(crate) metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// Rolling windows the alert engine reads.
    pub(crate) recent: Arc<crate::telemetry::recent::Recent>,
    pub(crate) alerts: Arc<crate::alerts::AlertEngine>,
    /// The autoscaler's view of each pool.
    pub(crate) scaling: Arc<Scaling>,
    pub(crate) wakers: Arc<Wakers>,
    pub(crate) waiters: Arc<Waiters>,
    pub(crate) keys: Arc<KeyCache>,
    /// Authentication of callers: keys, per-task tokens, rate limits, failed attempts.
    pub access: Arc<crate::auth::Access>,
    /// Which attempts run, so that a per-task token is honoured only while its attempt does.
    pub(crate) attempts: Arc<crate::auth::attempts::LiveAttempts>,
    /// The tamper-evident audit log.
    pub(crate) audit: Arc<crate::audit::Audit>,
    /// Rate limits per key, per tenant and of failed authentications per source.
    pub(crate) limits: Arc<crate::auth::limits::RateLimiters>,
    /// The secrets vault; `vault.master().derive(purpose)` gives keys for other uses.
    pub(crate) vault: Arc<crate::vault::Vault>,
    /// Submissions, dispatcher loops and attempts.
    pub(crate) scheduler: Arc<Scheduler>,
    /// HTTP clients for agents, one per egress requester (`[agents_egress]`; trusting only
    /// `[agents_tls]`'s CA).
    pub(crate) agents: Arc<crate::agent_clients::AgentClients>,
    /// The task trace exporter; `None` without `[telemetry.otlp]` (spans are then not built).
    pub(crate) traces: Option<Arc<crate::telemetry::traces::Traces>>,
    /// The model gateway: providers, ledger, budgets, limits.
    pub(crate) gateway: Arc<crate::gateway::Gateway>,
    /// This process's lease owner name (unique per start).
    pub(crate) owner: Arc<str>,
    /// Tells the other control planes on the same database what happened here.
    pub(crate) cluster: crate::cluster::Notifier,
    /// Whether this control plane leads the deployment (runs the singleton loops).
    pub leadership: Arc<crate::leadership::Leadership>,
    /// Cancelled when the server begins to shut down.
    pub(crate) shutdown: CancellationToken,
}

impl Services {
    /// True when tasks of `agent_type` can be accepted from `tenant`: a pool that serves the
    /// tenant is configured, or an instance that may run its tasks is registered.
    pub fn serves_type(&self, agent_type: &str, tenant: flotilla_core::id::TenantId) -> bool {
        self.config.pools.iter().any(|p| {
            p.name == agent_type
                && flotilla_core::agent::may_serve(None, p.tenants.as_deref(), tenant)
        }) || self.registry.serves(agent_type, tenant)
    }

    /// The configured pool of a type, if any.
    pub fn pool(&self, agent_type: &str) -> Option<&flotilla_core::config::Pool> {
        self.config.pool(agent_type)
    }
}

/// The model gateway's routes take the gateway alone as their state.
impl axum::extract::FromRef<AppState> for Arc<crate::gateway::Gateway> {
    fn from_ref(state: &AppState) -> Self {
        state.gateway.clone()
    }
}

impl axum::extract::FromRef<AppState> for Arc<Config> {
    fn from_ref(state: &AppState) -> Self {
        state.config.clone()
    }
}
