//! The model gateway (docs/design.md §7): an OpenAI-compatible `POST /v1/chat/completions` (JSON and
//! server-sent events) and `GET /v1/models`, in front of the configured providers.
//!
//! A call goes: authenticate (API key or per-task token) → validate → choose the model (`auto`
//! asks [`flotilla_core::recommend`]) → take the rate limits → reserve the price ceiling in the
//! tenant's budgets (`block` refuses with 402, `downgrade` walks the model's `downgrade_to`
//! chain) → call the provider, retrying and falling back → settle the budgets and limits with
//! the actual usage → write the usage record (batched) → answer. No path spends without the
//! budget check: it is the only way to a provider.

mod accounting;
pub(crate) mod budgets;
pub(crate) mod call;
pub(crate) mod error;
pub(crate) mod ledger;
pub(crate) mod limits;
pub(crate) mod providers;
pub(crate) mod request;
pub(crate) mod stream;

use crate::clock::Clock;
use crate::fleet::events::EventSink;
use crate::notify::Notifications;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::recent::Recent;
use crate::telemetry::traces::Traces;
use crate::vault::Vault;
use budgets::Budgets;
use error::GatewayError;
use flotilla_core::config::{ApiKeySource, Gateway as GatewayConfig, ProviderKind};
use flotilla_core::id::{TaskId, TenantId};
use flotilla_core::model::ModelSpec;
use ledger::Ledger;
use limits::Limits;
use providers::ProviderClient;
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::task::TaskTracker;

/// Longest wait for a provider's answer to a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `GET /v1/system` reuses the providers' probe results: a reader polling it cannot
/// make the platform's provider keys be used more often than this.
const PROBE_CACHE: Duration = Duration::from_secs(30);
/// How long a provider key read from the vault is reused (a rotation applies within this).
const KEY_CACHE_TTL: Duration = Duration::from_secs(60);

/// The gateway's state: provider clients, the ledger, budgets and limits.
pub struct Gateway {
    config: GatewayConfig,
    clients: HashMap<String, ProviderClient>,
    keys: Mutex<HashMap<String, (Instant, SecretString)>>,
    pub ledger: Ledger,
    pub budgets: Budgets,
    limits: Limits,
    /// Streams being relayed; shutdown waits for them.
    pub streams: TaskTracker,
    /// Agent type of tasks whose tokens call models (for usage records).
    task_types: Mutex<HashMap<TaskId, Option<String>>>,
    /// The last probe of every provider, and when it was taken; held while a probe runs, so
    /// concurrent readers wait for one probe instead of starting their own.
    probes: tokio::sync::Mutex<Option<(Instant, Vec<flotilla_core::wire::ProviderStatus>)>>,
    store: flotilla_store::DynStore,
    vault: Arc<Vault>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    recent: Arc<Recent>,
    events: EventSink,
    notifications: Arc<Notifications>,
    traces: Option<Arc<Traces>>,
}

/// What the gateway uses besides its own parts.
pub struct GatewayHandles {
    pub store: flotilla_store::DynStore,
    /// Provider keys stored as `vault:` references.
    pub vault: Arc<Vault>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// The per-tenant hourly-token signal (the alert engine's `rate_limit` action).
    pub recent: Arc<Recent>,
    /// Budget thresholds are announced as events and notifications.
    pub events: EventSink,
    pub notifications: Arc<Notifications>,
    /// `gateway.chat` spans, when traces are exported.
    pub traces: Option<Arc<Traces>>,
}

/// Why the gateway could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up provider `{provider}`: {reason}")]
pub struct GatewayBuildError {
    provider: String,
    reason: String,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        ledger: Ledger,
        budgets: Budgets,
        handles: GatewayHandles,
    ) -> Result<Gateway, GatewayBuildError> {
        let mut clients = HashMap::new();
        for (name, provider) in &config.providers {
            let client = ProviderClient::new(provider).map_err(|reason| GatewayBuildError {
                provider: name.clone(),
                reason,
            })?;
            clients.insert(name.clone(), client);
        }
        Ok(Gateway {
            limits: Limits::for_store(config.limits, &handles.store),
            config,
            clients,
            keys: Mutex::default(),
            ledger,
            budgets,
            streams: TaskTracker::new(),
            task_types: Mutex::default(),
            probes: tokio::sync::Mutex::default(),
            store: handles.store,
            vault: handles.vault,
            clock: handles.clock,
            metrics: handles.metrics,
            recent: handles.recent,
            events: handles.events,
            notifications: handles.notifications,
            traces: handles.traces,
        })
    }

    pub fn models(&self) -> &[ModelSpec] {
        &self.config.models
    }

    /// The provider's API key, resolved at use (vault references are cached for a minute).
    async fn api_key(&self, provider: &str) -> Result<Option<SecretString>, GatewayError> {
        let Some(p) = self.config.providers.get(provider) else {
            return Ok(None);
        };
        let ProviderKind::OpenAi {
            api_key: Some(source),
            ..
        } = &p.kind
        else {
            return Ok(None);
        };
        match source {
            ApiKeySource::Env(var) => Ok(std::env::var(var).ok().map(SecretString::from)),
            ApiKeySource::Vault(reference) => {
                if let Ok(keys) = self.keys.lock()
                    && let Some((at, key)) = keys.get(provider)
                    && at.elapsed() < KEY_CACHE_TTL
                {
                    return Ok(Some(key.clone()));
                }
                let key = self
                    .vault
                    .resolve(TenantId::DEFAULT, reference)
                    .await
                    .map_err(|e| {
                        GatewayError::upstream(format!(
                            "the API key of provider `{provider}` could not be read from the vault: {e}"
                        ))
                    })?;
                if let Ok(mut keys) = self.keys.lock() {
                    keys.insert(provider.to_owned(), (Instant::now(), key.clone()));
                }
                Ok(Some(key))
            }
        }
    }

    /// Every provider's probe (for `GET /v1/system` and `flotilla doctor`), at most
    /// [`PROBE_CACHE`] old.
    pub async fn probe(&self) -> Vec<flotilla_core::wire::ProviderStatus> {
        let mut last = self.probes.lock().await;
        if let Some((at, statuses)) = last.as_ref()
            && at.elapsed() < PROBE_CACHE
        {
            return statuses.clone();
        }
        let statuses = self.probe_now().await;
        *last = Some((Instant::now(), statuses.clone()));
        statuses
    }

    /// Probes every provider at once.
    async fn probe_now(&self) -> Vec<flotilla_core::wire::ProviderStatus> {
        let probes = self
            .config
            .providers
            .iter()
            .map(|(name, provider)| async move {
                let kind = match provider.kind {
                    ProviderKind::OpenAi { .. } => "openai",
                    ProviderKind::Simulated { .. } => "simulated",
                };
                let result = match (self.api_key(name).await, self.clients.get(name)) {
                    (Err(e), _) => Err(e.message),
                    (Ok(_), None) => Err("no client".to_owned()),
                    (Ok(key), Some(client)) => client.probe(key.as_ref(), PROBE_TIMEOUT).await,
                };
                let (reachable, detail) = match result {
                    Ok(d) => (true, d),
                    Err(d) => (false, d),
                };
                flotilla_core::wire::ProviderStatus {
                    name: name.clone(),
                    kind: kind.to_owned(),
                    reachable,
                    detail,
                }
            });
        futures::future::join_all(probes).await
    }

    /// The agent type of a task (cached), for usage records of per-task tokens.
    async fn task_type(&self, tenant: TenantId, task: TaskId) -> Option<String> {
        if let Ok(types) = self.task_types.lock()
            && let Some(t) = types.get(&task)
        {
            return t.clone();
        }
        let found = self
            .store
            .get_task(Some(tenant), task)
            .await
            .ok()
            .flatten()
            .map(|t| t.agent_type);
        if let Ok(mut types) = self.task_types.lock() {
            if types.len() > 10_000 {
                types.clear();
            }
            types.insert(task, found.clone());
        }
        found
    }
}
