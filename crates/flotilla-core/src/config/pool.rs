//! `[[pools]]` and `[fleet]`: agent pools (docs/design.md §3, §5) and the fleet's loops.

use super::{ConfigError, invalid, positive_ms, valid_agent_type};
use crate::autoscale::AutoscalePolicy;
use crate::balance::{ScoreWeights, Strategy, StrategyKind};
use crate::health::{CheckThresholds, OutlierPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `[fleet]`: settings of the fleet's background loops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// How often the autoscaler samples each pool and decides.
    pub autoscale_interval_ms: u64,
    /// A failed instance (heartbeats stopped) is removed from the registry this long after it
    /// failed, unless it heartbeats again first.
    pub failed_removal_ms: u64,
    /// Scale-down waits this long for an instance's in-flight work before stopping it anyway.
    pub drain_timeout_ms: u64,
    /// Fleet events kept in the store (older ones are pruned).
    pub events_retention: u64,
    /// Where local agent processes write their output (`<instance>.log`); empty: to the
    /// control plane's own stdout and stderr.
    pub agent_log_dir: String,
    /// Most instances one tenant may have registered at once (its own agents; platform
    /// instances do not count). A registration past it answers `429`.
    pub max_instances_per_tenant: u32,
    /// Most distinct agent types among one tenant's own instances.
    pub max_types_per_tenant: u32,
}

impl Default for FleetSection {
    fn default() -> Self {
        Self {
            autoscale_interval_ms: 5_000,
            failed_removal_ms: 60_000,
            drain_timeout_ms: 60_000,
            events_retention: 100_000,
            agent_log_dir: String::new(),
            max_instances_per_tenant: 100,
            max_types_per_tenant: 20,
        }
    }
}

/// Validated `[fleet]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fleet {
    pub autoscale_interval: Duration,
    pub failed_removal: Duration,
    pub drain_timeout: Duration,
    pub events_retention: u64,
    pub agent_log_dir: Option<std::path::PathBuf>,
    pub max_instances_per_tenant: u32,
    pub max_types_per_tenant: u32,
}

/// `[[pools]]`: one kind of agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    /// The agent type, e.g. `code_generator`.
    pub name: String,
    /// Deadline of each attempt for this pool's tasks.
    pub timeout_ms: Option<u64>,
    /// Attempts per task for this pool.
    pub max_attempts: Option<u32>,
    /// Queue timeout of this pool's tasks, in seconds (0: never); absent:
    /// `scheduler.queue_timeout_s`.
    pub queue_timeout_s: Option<u64>,
    /// `local` (spawn agent processes here), `static` (instances register themselves; the
    /// autoscaler only recommends) or `kubernetes` (one Deployment per pool).
    pub provisioner: String,
    /// Balancing strategy: `p2c_ewma`, `round_robin`, `least_connections`,
    /// `weighted_round_robin` or `score`.
    pub strategy: String,
    /// Capacity (tasks at once) of each instance the provisioner starts.
    pub capacity: u32,
    pub min_instances: u32,
    pub max_instances: u32,
    /// `local`: the command to run, program first; empty runs this binary's `flotilla agent`.
    /// `--type`, `--control-plane` and `--capacity` are appended to the built-in agent only; any
    /// command gets `FLOTILLA_KEY`, `FLOTILLA_CONTROL_PLANE`, `AGENT_TYPE` and
    /// `FLOTILLA_INSTANCE_NAME` in its environment.
    pub command: Vec<String>,
    /// Extra environment of the pool's instances (local processes and Kubernetes pods).
    pub env: BTreeMap<String, String>,
    /// Tenant ids (UUIDs) whose tasks the pool's platform instances run; empty: every tenant.
    /// Instances a tenant registers itself run only that tenant's tasks, whatever this says.
    pub tenants: Vec<String>,
    pub score: ScoreSection,
    pub autoscale: AutoscaleSection,
    pub health: HealthSection,
    pub outlier: OutlierSection,
    pub kubernetes: KubernetesSection,
}

impl Default for PoolSection {
    fn default() -> Self {
        Self {
            name: String::new(),
            timeout_ms: None,
            max_attempts: None,
            queue_timeout_s: None,
            provisioner: "local".to_owned(),
            strategy: StrategyKind::default().as_str().to_owned(),
            capacity: 4,
            min_instances: 1,
            max_instances: 10,
            command: Vec::new(),
            env: BTreeMap::new(),
            tenants: Vec::new(),
            score: ScoreSection::default(),
            autoscale: AutoscaleSection::default(),
            health: HealthSection::default(),
            outlier: OutlierSection::default(),
            kubernetes: KubernetesSection::default(),
        }
    }
}

/// `[pools.score]`: the `score` strategy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreSection {
    pub weights: ScoreWeights,
    /// Compatibility (0 to 1) by the `variant` an instance declares in its metadata; instances
    /// without a listed variant count 1.
    pub compatibility: BTreeMap<String, f64>,
}

/// `[pools.autoscale]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleSection {
    pub enabled: bool,
    pub target_utilisation: f64,
    pub scale_up_threshold: f64,
    pub scale_down_threshold: f64,
    /// Queued tasks per slot of capacity above which the pool scales up.
    pub queue_per_capacity: f64,
    pub window_s: u64,
    pub scale_up_delay_s: u64,
    pub scale_down_delay_s: u64,
    pub cooldown_s: u64,
}

impl Default for AutoscaleSection {
    fn default() -> Self {
        let p = AutoscalePolicy::default();
        Self {
            enabled: true,
            target_utilisation: p.target_utilisation,
            scale_up_threshold: p.scale_up_threshold,
            scale_down_threshold: p.scale_down_threshold,
            queue_per_capacity: p.queue_per_capacity,
            window_s: p.window.as_secs(),
            scale_up_delay_s: p.scale_up_delay.as_secs(),
            scale_down_delay_s: p.scale_down_delay.as_secs(),
            cooldown_s: p.cooldown.as_secs(),
        }
    }
}

/// `[pools.health]`: active checks (`GET /health`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// Between checks of one instance; 0 disables active checks.
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failed checks that fail a healthy instance.
    pub unhealthy_threshold: u32,
    /// Consecutive good checks that return a failed instance to rotation.
    pub healthy_threshold: u32,
}

impl Default for HealthSection {
    fn default() -> Self {
        Self {
            interval_ms: 5_000,
            timeout_ms: 2_000,
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

/// `[pools.outlier]`: passive outlier ejection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSection {
    pub enabled: bool,
    /// Window of each instance's attempt statistics.
    pub window_s: u64,
    pub min_requests: u32,
    pub max_error_ratio: f64,
    /// 0 disables ejection on consecutive failures.
    pub consecutive_failures: u32,
    pub base_ejection_s: u64,
    pub max_ejection_s: u64,
    pub max_ejected_share: f64,
}

impl Default for OutlierSection {
    fn default() -> Self {
        Self {
            enabled: true,
            window_s: 30,
            min_requests: 10,
            max_error_ratio: 0.5,
            consecutive_failures: 5,
            base_ejection_s: 30,
            max_ejection_s: 300,
            max_ejected_share: 0.5,
        }
    }
}

/// `[pools.kubernetes]`: the `kubernetes` provisioner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesSection {
    pub image: String,
    /// Namespace of the pool's objects; empty: the namespace of the service account (in a
    /// cluster) or of the kubeconfig's context.
    pub namespace: String,
    /// Secret whose key `key` holds the agents' API key.
    pub key_secret: String,
    /// URL agents reach the control plane at (its Service).
    pub control_plane_url: String,
    pub port: u16,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
    /// Path of a kubeconfig file; empty: in-cluster service account, then `KUBECONFIG` /
    /// `~/.kube/config`.
    pub kubeconfig: String,
    /// Context of the kubeconfig to use; empty: its current context.
    pub context: String,
}

impl Default for KubernetesSection {
    fn default() -> Self {
        Self {
            image: String::new(),
            namespace: String::new(),
            key_secret: "flotilla-agent-key".to_owned(),
            control_plane_url: "http://flotilla:8080".to_owned(),
            port: 8000,
            cpu_request: "250m".to_owned(),
            memory_request: "256Mi".to_owned(),
            cpu_limit: "1".to_owned(),
            memory_limit: "1Gi".to_owned(),
            kubeconfig: String::new(),
            context: String::new(),
        }
    }
}

/// How a pool's instances come to exist.
#[derive(Clone, Debug, PartialEq)]
pub enum Provisioner {
    /// Instances register themselves; the autoscaler only recommends.
    Static,
    /// Agent processes on this machine.
    Local {
        /// Program and arguments; empty runs the built-in `flotilla agent`.
        command: Vec<String>,
    },
    /// One Deployment per pool.
    Kubernetes(Box<KubernetesSection>),
}

impl Provisioner {
    /// Its configuration name.
    pub fn name(&self) -> &'static str {
        match self {
            Provisioner::Static => "static",
            Provisioner::Local { .. } => "local",
            Provisioner::Kubernetes(_) => "kubernetes",
        }
    }
}

/// Validated active-check settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthChecks {
    /// `None`: no active checks.
    pub interval: Option<Duration>,
    pub timeout: Duration,
    pub thresholds: CheckThresholds,
}

/// Validated `[[pools]]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub name: String,
    pub timeout: Option<Duration>,
    pub max_attempts: Option<u32>,
    /// Its own queue timeout: `Some(None)` never, `None` the scheduler's default.
    pub queue_timeout: Option<Option<Duration>>,
    pub provisioner: Provisioner,
    pub strategy: Strategy,
    pub capacity: u32,
    pub env: BTreeMap<String, String>,
    /// The tenants the pool's platform instances serve; `None`: every tenant.
    pub tenants: Option<Vec<crate::id::TenantId>>,
    /// `None` when autoscaling is off; min/max still bound the provisioner.
    pub autoscale: Option<AutoscalePolicy>,
    pub min_instances: u32,
    pub max_instances: u32,
    pub compatibility: BTreeMap<String, f64>,
    pub health: HealthChecks,
    /// `None` when outlier ejection is off.
    pub outlier: Option<OutlierPolicy>,
    /// Window of each instance's attempt statistics.
    pub stats_window: Duration,
}

impl Pool {
    /// The pool of an agent type no `[[pools]]` entry names: instances register themselves,
    /// every other setting is the default.
    pub fn implicit(name: &str) -> Pool {
        let section = PoolSection {
            name: name.to_owned(),
            provisioner: "static".to_owned(),
            ..PoolSection::default()
        };
        // The defaults are valid; should that ever break, fall back to the bare essentials.
        validate_pool(&section, "pools[]").unwrap_or_else(|_| Pool {
            name: name.to_owned(),
            timeout: None,
            max_attempts: None,
            queue_timeout: None,
            provisioner: Provisioner::Static,
            strategy: StrategyKind::default().into(),
            capacity: 4,
            env: BTreeMap::new(),
            tenants: None,
            autoscale: None,
            min_instances: 0,
            max_instances: 10,
            compatibility: BTreeMap::new(),
            health: HealthChecks {
                interval: None,
                timeout: Duration::from_secs(2),
                thresholds: CheckThresholds {
                    unhealthy: 3,
                    healthy: 2,
                },
            },
            outlier: None,
            stats_window: Duration::from_secs(30),
        })
    }
}

fn share(key: &str, value: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(key, "must be between 0 and 1"))
    }
}

fn seconds(key: &str, s: u64) -> Result<Duration, ConfigError> {
    if s == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(Duration::from_secs(s))
}

/// Validates `[fleet]`.
pub(super) fn validate_fleet(raw: &FleetSection) -> Result<Fleet, ConfigError> {
    Ok(Fleet {
        autoscale_interval: positive_ms("fleet.autoscale_interval_ms", raw.autoscale_interval_ms)?,
        failed_removal: positive_ms("fleet.failed_removal_ms", raw.failed_removal_ms)?,
        drain_timeout: positive_ms("fleet.drain_timeout_ms", raw.drain_timeout_ms)?,
        events_retention: raw.events_retention.max(1),
        agent_log_dir: (!raw.agent_log_dir.is_empty())
            .then(|| std::path::PathBuf::from(&raw.agent_log_dir)),
        max_instances_per_tenant: raw.max_instances_per_tenant,
        max_types_per_tenant: raw.max_types_per_tenant,
    })
}

/// Validates one `[[pools]]` entry; `key` is its path for messages, e.g. `pools[0]`.
pub(super) fn validate_pool(p: &PoolSection, key: &str) -> Result<Pool, ConfigError> {
    let k = |field: &str| format!("{key}.{field}");
    if !valid_agent_type(&p.name) {
        return Err(invalid(
            &k("name"),
            "must be 1-64 characters of a-z, 0-9, `_` or `-`",
        ));
    }
    let max_attempts = p
        .max_attempts
        .map(|n| {
            if (1..=100).contains(&n) {
                Ok(n)
            } else {
                Err(invalid(&k("max_attempts"), "must be between 1 and 100"))
            }
        })
        .transpose()?;
    let provisioner = match p.provisioner.as_str() {
        "static" => Provisioner::Static,
        "local" => Provisioner::Local {
            command: p.command.clone(),
        },
        "kubernetes" => {
            if p.kubernetes.image.is_empty() {
                return Err(invalid(
                    &k("kubernetes.image"),
                    "the kubernetes provisioner needs the agents' container image",
                ));
            }
            Provisioner::Kubernetes(Box::new(p.kubernetes.clone()))
        }
        other => {
            return Err(invalid(
                &k("provisioner"),
                format!("`{other}` is not `local`, `static` or `kubernetes`"),
            ));
        }
    };
    if !p.command.is_empty() && p.provisioner != "local" {
        return Err(invalid(
            &k("command"),
            "only the local provisioner runs a command",
        ));
    }
    let kind: StrategyKind = p
        .strategy
        .parse()
        .map_err(|e: String| invalid(&k("strategy"), e))?;
    let w = &p.score.weights;
    for (name, v) in [
        ("success_rate", w.success_rate),
        ("response_time", w.response_time),
        ("free_capacity", w.free_capacity),
        ("compatibility", w.compatibility),
        ("complexity_fit", w.complexity_fit),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(invalid(
                &k(&format!("score.weights.{name}")),
                "must be a number ≥ 0",
            ));
        }
    }
    for (variant, v) in &p.score.compatibility {
        share(&k(&format!("score.compatibility.{variant}")), *v)?;
    }
    if !(1..=10_000).contains(&p.capacity) {
        return Err(invalid(&k("capacity"), "must be between 1 and 10000"));
    }
    if p.max_instances == 0 || p.max_instances > 10_000 {
        return Err(invalid(&k("max_instances"), "must be between 1 and 10000"));
    }
    if p.min_instances > p.max_instances {
        return Err(invalid(
            &k("min_instances"),
            format!("must not exceed max_instances ({})", p.max_instances),
        ));
    }
    let a = &p.autoscale;
    let target = share(&k("autoscale.target_utilisation"), a.target_utilisation)?;
    let up = share(&k("autoscale.scale_up_threshold"), a.scale_up_threshold)?;
    let down = share(&k("autoscale.scale_down_threshold"), a.scale_down_threshold)?;
    if !(down < target && target < up) {
        return Err(invalid(
            &k("autoscale.target_utilisation"),
            format!(
                "must lie strictly between scale_down_threshold ({down}) and scale_up_threshold ({up}), or the pool could scale back and forth"
            ),
        ));
    }
    if !(a.queue_per_capacity.is_finite() && a.queue_per_capacity >= 0.0) {
        return Err(invalid(&k("autoscale.queue_per_capacity"), "must be ≥ 0"));
    }
    let policy = AutoscalePolicy {
        min: p.min_instances,
        max: p.max_instances,
        target_utilisation: target,
        scale_up_threshold: up,
        scale_down_threshold: down,
        queue_per_capacity: a.queue_per_capacity,
        window: seconds(&k("autoscale.window_s"), a.window_s)?,
        scale_up_delay: seconds(&k("autoscale.scale_up_delay_s"), a.scale_up_delay_s)?,
        scale_down_delay: seconds(&k("autoscale.scale_down_delay_s"), a.scale_down_delay_s)?,
        cooldown: Duration::from_secs(a.cooldown_s),
    };
    let h = &p.health;
    let health = HealthChecks {
        interval: (h.interval_ms > 0).then(|| Duration::from_millis(h.interval_ms)),
        timeout: positive_ms(&k("health.timeout_ms"), h.timeout_ms)?,
        thresholds: CheckThresholds {
            unhealthy: h.unhealthy_threshold.max(1),
            healthy: h.healthy_threshold.max(1),
        },
    };
    let tenants = p
        .tenants
        .iter()
        .map(|t| {
            t.parse::<crate::id::TenantId>()
                .map_err(|_| invalid(&k("tenants"), format!("`{t}` is not a tenant id (a UUID)")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tenants = (!tenants.is_empty()).then_some(tenants);
    let o = &p.outlier;
    let outlier = OutlierPolicy {
        min_requests: o.min_requests,
        max_error_ratio: share(&k("outlier.max_error_ratio"), o.max_error_ratio)?,
        consecutive_failures: o.consecutive_failures,
        base_ejection: seconds(&k("outlier.base_ejection_s"), o.base_ejection_s)?,
        max_ejection: seconds(&k("outlier.max_ejection_s"), o.max_ejection_s)?,
        max_ejected_share: share(&k("outlier.max_ejected_share"), o.max_ejected_share)?,
    };
    Ok(Pool {
        name: p.name.clone(),
        timeout: p
            .timeout_ms
            .map(|ms| positive_ms(&k("timeout_ms"), ms))
            .transpose()?,
        max_attempts,
        queue_timeout: p
            .queue_timeout_s
            .map(|s| queue_timeout(&k("queue_timeout_s"), s))
            .transpose()?,
        provisioner,
        strategy: Strategy {
            kind,
            weights: p.score.weights,
        },
        capacity: p.capacity,
        env: p.env.clone(),
        tenants,
        autoscale: a.enabled.then_some(policy),
        min_instances: p.min_instances,
        max_instances: p.max_instances,
        compatibility: p.score.compatibility.clone(),
        health,
        outlier: o.enabled.then_some(outlier),
        stats_window: seconds(&k("outlier.window_s"), o.window_s)?,
    })
}

/// A queue timeout of `seconds` (0: never), at most 30 days.
pub(crate) fn queue_timeout(key: &str, seconds: u64) -> Result<Option<Duration>, ConfigError> {
    match seconds {
        0 => Ok(None),
        1..=2_592_000 => Ok(Some(Duration::from_secs(seconds))),
        _ => Err(invalid(
            key,
            "must be between 1 and 2592000 seconds (30 days), or 0 for never",
        )),
    }
}
