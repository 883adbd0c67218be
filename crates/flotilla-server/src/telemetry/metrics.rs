//! Prometheus metrics (docs/design.md §11) through `prometheus-client`.
//!
//! Counters and histograms are updated where things happen (HTTP middleware, dispatch,
//! completion, leases, fleet events); gauges that describe state (instances by status, load per
//! instance, queue length, success rate) are refreshed from the registry and the store at each
//! scrape, so they are never stale. Label sets are bounded: agent type, model, status, route,
//! method, event kind — and the instance id of `ai_agent_load`, which docs/design.md §11 names (bounded
//! by the fleet's size, and removed with the instance).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Buckets of durations in seconds: 5 ms to about 5 minutes.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Buckets of store operations in seconds: 100 µs to 2.5 s.
const STORE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

fn store_histogram() -> Histogram {
    Histogram::new(STORE_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    /// The store operation, e.g. `claim_tasks`.
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `open`, `idle` or `max`.
    pub state: String,
}

fn histograms<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Family::new_with_constructor(duration_histogram)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentTypeLabels {
    pub agent_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstancesLabels {
    /// The agent type (docs/design.md §11 names this label `type`).
    pub r#type: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentIdLabels {
    pub agent_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentRequestLabels {
    pub agent_type: String,
    /// `success`, `error`, `timeout`, `rejected`.
    pub status: String,
    /// `execute` or `health`.
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub agent_type: String,
    /// The terminal status.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub agent_type: String,
    pub model: String,
    /// `input` or `output`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template, e.g. `/v1/tasks/{id}`; `unmatched` for unknown paths.
    pub route: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    pub pool: String,
    /// `up` or `down`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    /// `json` or `slack`.
    pub notifier: String,
    /// `delivered` or `failed` (after retries).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabels {
    /// The model that served the call (after downgrade and fallback).
    pub model: String,
    pub provider: String,
    /// `ok`, `error`, `cancelled` or `rejected`.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelTokenLabels {
    pub model: String,
    /// `input`, `cached_input`, `output` or `reasoning` (cached and reasoning tokens are also
    /// counted in input and output).
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    pub tenant: String,
    /// `daily` or `monthly`.
    pub period: String,
}

/// Every metric of the control plane.
pub struct Metrics {
    registry: Registry,
    /// The registered family names (a counter's without `_total`).
    names: Vec<&'static str>,
    // docs/design.md §11 names, which existing dashboards and autoscalers query.
    pub agents: Family<InstancesLabels, Gauge>,
    pub agent_load: Family<AgentIdLabels, Gauge>,
    pub task_duration: Histograms<TaskLabels>,
    pub agent_requests: Family<AgentRequestLabels, Counter>,
    pub agent_response_time: Histograms<AgentTypeLabels>,
    pub success_rate: Family<AgentTypeLabels, Gauge<f64, AtomicU64>>,
    pub token_usage: Family<TokenLabels, Counter>,
    pub queue_length: Family<AgentTypeLabels, Gauge>,
    // flotilla_*.
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Histograms<RouteLabels>,
    pub claims: Family<AgentTypeLabels, Counter>,
    pub retries: Family<AgentTypeLabels, Counter>,
    pub leases_expired: Counter,
    /// Control planes live on this database (1 on SQLite).
    pub replicas: Gauge,
    /// 1 while this control plane leads.
    pub leader: Gauge,
    /// Long-polls parked on this control plane (`GET /v1/tasks/{id}?wait=`).
    pub waiters_parked: Gauge,
    pub fleet_events: Family<KindLabels, Counter>,
    pub scale_decisions: Family<ScaleLabels, Counter>,
    pub pool_desired: Family<AgentTypeLabels, Gauge>,
    pub store_errors: Counter,
    /// Durations of the store operations on the task path.
    pub store_query_duration: Family<StoreOpLabels, Histogram, fn() -> Histogram>,
    /// The store's connection pools, refreshed at each scrape.
    pub store_connections: Family<ConnectionLabels, Gauge>,
    pub alerts: Family<AlertLabels, Gauge>,
    pub notifications: Family<NotificationLabels, Counter>,
    // The model gateway.
    pub gateway_requests: Family<GatewayLabels, Counter>,
    pub gateway_upstream_duration: Histograms<ProviderLabels>,
    pub gateway_first_token: Histograms<ProviderLabels>,
    pub gateway_tokens: Family<ModelTokenLabels, Counter>,
    pub gateway_cost: Family<ModelLabels, Counter<f64, AtomicU64>>,
    pub gateway_fallbacks: Family<ModelLabels, Counter>,
    pub gateway_downgrades: Family<ModelLabels, Counter>,
    /// Calls that settled above their budget reservation, and by how much.
    pub budget_overshoots: Family<ModelLabels, Counter>,
    pub budget_overshoot_usd: Family<ModelLabels, Counter<f64, AtomicU64>>,
    pub usage_write_failures: Counter,
    /// Spend over limit of each budget's current window, refreshed at each scrape.
    pub budget_utilisation: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family, registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            agents: Family::default(),
            agent_load: Family::default(),
            task_duration: histograms(),
            agent_requests: Family::default(),
            agent_response_time: histograms(),
            success_rate: Family::default(),
            token_usage: Family::default(),
            queue_length: Family::default(),
            http_requests: Family::default(),
            http_duration: histograms(),
            claims: Family::default(),
            retries: Family::default(),
            leases_expired: Counter::default(),
            replicas: Gauge::default(),
            leader: Gauge::default(),
            waiters_parked: Gauge::default(),
            fleet_events: Family::default(),
            scale_decisions: Family::default(),
            pool_desired: Family::default(),
            store_errors: Counter::default(),
            store_query_duration: Family::new_with_constructor(store_histogram),
            store_connections: Family::default(),
            alerts: Family::default(),
            notifications: Family::default(),
            gateway_requests: Family::default(),
            gateway_upstream_duration: histograms(),
            gateway_first_token: histograms(),
            gateway_tokens: Family::default(),
            gateway_cost: Family::default(),
            gateway_fallbacks: Family::default(),
            gateway_downgrades: Family::default(),
            budget_overshoots: Family::default(),
            budget_overshoot_usd: Family::default(),
            usage_write_failures: Counter::default(),
            budget_utilisation: Family::default(),
            registry: Registry::default(),
            names: Vec::new(),
        };
        let mut names = Vec::new();
        register(
            &mut registry,
            &mut names,
            "ai_agents_total",
            "Agent instances by type and status",
            m.agents.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "ai_agent_load",
            "Tasks in flight on each instance",
            m.agent_load.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "ai_task_duration_seconds",
            "Time from submission to the terminal state, by agent type and status",
            m.task_duration.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "ai_agent_requests",
            "Calls to agents by agent type, outcome and endpoint",
            m.agent_requests.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "ai_agent_response_time_seconds",
            "Duration of agent /execute calls",
            m.agent_response_time.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "ai_agent_success_rate",
            "Share of recent attempts that succeeded, over each instance's statistics window",
            m.success_rate.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "ai_agent_token_usage",
            "Model tokens agents reported, by agent type, model and direction",
            m.token_usage.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "ai_agent_queue_length",
            "Tasks waiting, by agent type",
            m.queue_length.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_http_requests",
            "API requests by route, method and status",
            m.http_requests.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_http_request_duration_seconds",
            "API request duration by route and method",
            m.http_duration.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_scheduler_claims",
            "Tasks claimed for dispatch",
            m.claims.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_scheduler_retries",
            "Failed attempts scheduled for a retry",
            m.retries.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_scheduler_leases_expired",
            "Leases that expired and returned their task to the queue",
            m.leases_expired.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_replicas",
            "Control planes live on this database, which share each agent instance's capacity",
            m.replicas.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_leader",
            "1 while this control plane leads (runs the autoscaler, the alert engine, the sweeps)",
            m.leader.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_waiters_parked",
            "Long-polls (GET /v1/tasks/{id}?wait=) parked on this control plane",
            m.waiters_parked.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_fleet_events",
            "Fleet events by kind",
            m.fleet_events.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_autoscaler_decisions",
            "Autoscaling decisions by pool and direction",
            m.scale_decisions.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_pool_desired_instances",
            "The size the autoscaler wants for each pool",
            m.pool_desired.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_store_errors",
            "Store operations of background loops that failed",
            m.store_errors.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_store_query_duration_seconds",
            "Duration of store operations on the task path, by operation",
            m.store_query_duration.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_store_connections",
            "Connections of the store's pools: open, idle, and the maximum",
            m.store_connections.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_alert_firing",
            "1 while any alert of the rule fires, else 0",
            m.alerts.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_alert_notifications",
            "Alert notifications by notifier and outcome (failed: after every retry)",
            m.notifications.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_gateway_requests",
            "Model calls through the gateway by served model, provider and outcome",
            m.gateway_requests.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_gateway_upstream_duration_seconds",
            "Duration of provider calls (whole answer), by provider",
            m.gateway_upstream_duration.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_gateway_time_to_first_token_seconds",
            "Time from the call to the provider's first streamed event, by provider",
            m.gateway_first_token.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_gateway_tokens",
            "Tokens of model calls by model and kind",
            m.gateway_tokens.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_gateway_cost_usd",
            "Cost of model calls in US dollars by model (the ledger keeps the exact amounts)",
            m.gateway_cost.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_gateway_fallbacks",
            "Calls that fell back from this model to another",
            m.gateway_fallbacks.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_gateway_downgrades",
            "Calls a downgrade budget moved off this model",
            m.gateway_downgrades.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_budget_overshoots",
            "Calls of this model that cost more than their budget reservation",
            m.budget_overshoots.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_budget_overshoot_usd",
            "Dollars calls of this model cost beyond their budget reservations",
            m.budget_overshoot_usd.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_usage_write_failures",
            "Batches of usage records the store refused (they are retried)",
            m.usage_write_failures.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "flotilla_budget_utilisation_ratio",
            "Spend over limit of each tenant budget's current window",
            m.budget_utilisation.clone(),
        );
        // The process's own CPU, memory and descriptors, read at each scrape.
        super::process::mark_start();
        registry.register_collector(Box::new(super::process::ProcessCollector));
        names.extend(super::process::NAMES);
        Self {
            registry,
            names,
            ..m
        }
    }

    /// Records how long a store operation took.
    pub fn observe_store(&self, operation: &str, took: std::time::Duration) {
        self.store_query_duration
            .get_or_create(&StoreOpLabels {
                operation: operation.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// The registered family names (a counter's without `_total`).
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// Labels of one agent type.
    pub fn agent_type(agent_type: &str) -> AgentTypeLabels {
        AgentTypeLabels {
            agent_type: agent_type.to_owned(),
        }
    }

    /// The OpenMetrics text of every family.
    pub fn encode_openmetrics(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn register(
    registry: &mut Registry,
    names: &mut Vec<&'static str>,
    name: &'static str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
) {
    names.push(name);
    registry.register(name, help, metric);
}

/// Converts OpenMetrics text (as `prometheus-client` writes it) to the classic Prometheus text
/// format (0.0.4) that scrapers not asking for OpenMetrics — and `promtool check metrics` —
/// read: a counter family is named after its `_total` samples, `# UNIT` and `# EOF` lines go,
/// and a non-counter whose name ends in `_total` (docs/design.md §11's gauge `ai_agents_total`) is typed
/// `untyped`, which the classic format allows for any name.
pub fn openmetrics_to_classic(text: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) && !name.ends_with("_total") {
                format!("# HELP {name}_total {help}")
            } else {
                line.to_owned()
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            if kind == "counter" && !name.ends_with("_total") {
                format!("# TYPE {name}_total counter")
            } else if kind != "counter" && name.ends_with("_total") {
                format!("# TYPE {name} untyped")
            } else {
                line.to_owned()
            }
        } else {
            line.to_owned()
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_after_their_samples_in_the_classic_format() {
        let m = Metrics::new();
        m.claims.get_or_create(&Metrics::agent_type("x")).inc_by(3);
        m.agents
            .get_or_create(&InstancesLabels {
                r#type: "x".into(),
                status: "idle".into(),
            })
            .set(2);
        let classic = openmetrics_to_classic(&m.encode_openmetrics().unwrap_or_default());
        assert!(classic.contains("# TYPE flotilla_scheduler_claims_total counter\n"));
        assert!(classic.contains("flotilla_scheduler_claims_total{agent_type=\"x\"} 3\n"));
        assert!(classic.contains("# TYPE ai_agents_total untyped\n"));
        assert!(classic.contains("ai_agents_total{type=\"x\",status=\"idle\"} 2\n"));
        assert!(!classic.contains("# EOF"));
    }
}
