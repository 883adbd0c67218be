//! The configuration schema and its validation (docs/design.md §12).
//!
//! Two stages: [`ConfigFile`] is what `flotilla.toml` may say (unknown keys are errors that name
//! the key), [`Config`] is the validated runtime form. Sources apply in order: file, then
//! `FLOTILLA_<SECTION>__<KEY>` environment variables, then command-line flags. The caller reads
//! the file and the environment and hands them in, so loading is a pure function.

mod agents_egress;
mod agents_tls;
mod alerting;
mod connections;
mod fair_share;
mod gateway;
mod limits;
mod otlp;
mod pool;
mod priority;
mod tls;
mod vault;

pub use agents_egress::{AgentsEgressSection, AgentsEgressTenantSection};
pub use agents_tls::{AgentsTls, AgentsTlsSection, ClientCertificate};
pub use alerting::{
    AlertSection, Alerting, AlertingSection, Email, EmailSection, SmtpTls, Webhook, WebhookFormat,
    WebhookSection,
};
pub use connections::Connections;
pub use fair_share::{FairShareConfig, FairShareSection};
pub use gateway::{
    ApiKeySource, Gateway, GatewayLimits, GatewaySection, ModelSection, Provider, ProviderKind,
    ProviderSection,
};
pub use limits::{RateLimits, RateLimitsSection};
pub use otlp::{Otlp, OtlpProtocol, OtlpSection};
pub use pool::{
    AutoscaleSection, Fleet, FleetSection, HealthChecks, HealthSection, KubernetesSection,
    OutlierSection, Pool, PoolSection, Provisioner, ScoreSection,
};
pub use priority::MaxPriority;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
pub use tls::{Tls, TlsSection};
pub use vault::{
    Hashicorp, HashicorpAuth, HashicorpSection, ValueSource, Vault, VaultBackend, VaultSection,
};

/// The file's schema. Every field has a working default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub server: ServerSection,
    pub database: DatabaseSection,
    pub scheduler: SchedulerSection,
    pub log: LogSection,
    pub fleet: FleetSection,
    pub telemetry: TelemetrySection,
    pub alerting: AlertingSection,
    pub vault: VaultSection,
    pub rate_limits: RateLimitsSection,
    /// `[audit]`: retention of the audit log.
    pub audit: AuditSection,
    pub tls: TlsSection,
    pub agents_tls: AgentsTlsSection,
    /// Which addresses agent instances may be called at.
    pub agents_egress: AgentsEgressSection,
    pub gateway: GatewaySection,
    /// Model providers by name (`[providers.openai]`); `simulated` is built in.
    pub providers: std::collections::BTreeMap<String, ProviderSection>,
    /// Models the gateway serves, besides (or replacing, by name) the shipped table.
    pub models: Vec<ModelSection>,
    /// Alert rules (besides the classic defaults unless `alerting.default_rules = false`).
    pub alerts: Vec<AlertSection>,
    /// Agent pools. A task's `agent_type` must name a pool or the type of a registered instance.
    pub pools: Vec<PoolSection>,
}

/// `[server]`: the API listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address of the API listener.
    pub listen: String,
    /// Directory of the embedded database and other local state.
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes (larger bodies get 413).
    pub max_body_bytes: usize,
    /// Longest `?wait=` a long-poll may ask for, in seconds.
    pub max_wait_s: u64,
    /// Proxies (CIDR ranges or addresses) whose `Forwarded`/`X-Forwarded-For` headers name the
    /// client; from any other peer the headers are ignored (`flotilla_core::client_addr`).
    pub trusted_proxies: Vec<String>,
    /// Connections served at once; more wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// Longest wait for a request's headers, on a new connection and between the requests of a
    /// kept-alive one (the idle timeout), in milliseconds.
    pub header_read_timeout_ms: u64,
    /// TLS handshakes in flight at once; each must finish within `header_read_timeout_ms`.
    pub max_tls_handshakes: usize,
    /// Long-polls (`?wait=`) one key may have parked at once; more get `429 rate_limited`.
    pub max_waits_per_key: u32,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            data_dir: PathBuf::from("flotilla-data"),
            max_body_bytes: 1024 * 1024,
            max_wait_s: 60,
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            max_tls_handshakes: 256,
            max_waits_per_key: 100,
        }
    }
}

/// `[audit]`: how long the audit log keeps entries (docs/security.md, "Audit log").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Entries older than this many seconds are pruned (behind an `audit.prune` entry, so the
    /// rest still verifies); 0 keeps every entry.
    pub retention_s: u64,
    /// How often the leader prunes, in seconds.
    pub prune_interval_s: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            retention_s: 0,
            prune_interval_s: 3_600,
        }
    }
}

/// `[database]`: where state lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// `postgres://…` for PostgreSQL, `sqlite://PATH` for a SQLite file; empty means
    /// `<data_dir>/flotilla.db`.
    pub url: String,
    /// Connections in the pool (PostgreSQL; SQLite uses one writer and this many readers).
    pub max_connections: u32,
    /// The leader lease (docs/design.md §9): the leader renews it every third of this; when the
    /// leader dies, another control plane takes over within this plus a third of it.
    pub leader_lease_ms: u64,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 8,
            leader_lease_ms: 10_000,
        }
    }
}

/// `[scheduler]`: claims, leases, retries, heartbeats.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSection {
    /// How long a claim holds a task without renewal; after a crash, tasks return to the queue
    /// this long after the last renewal.
    pub lease_ttl_ms: u64,
    /// Deadline of each attempt when neither the task nor its pool names one.
    pub default_timeout_ms: u64,
    /// Attempts per task when neither the task nor its pool names a number.
    pub default_max_attempts: u32,
    /// First retry backoff; doubles each attempt, with jitter.
    pub retry_base_ms: u64,
    /// Cap of the retry backoff.
    pub retry_max_ms: u64,
    /// Interval at which agents are asked to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// An instance whose last heartbeat is older than this is marked failed.
    pub heartbeat_timeout_ms: u64,
    /// Most tasks claimed in one store transaction.
    pub claim_batch: u32,
    /// The highest priority each role may submit with.
    pub max_priority: MaxPriority,
    /// `[scheduler.fair_share]`: per-tenant queue limit and weights.
    pub fair_share: FairShareSection,
    /// A queued task that no instance has started this many seconds after it became due fails,
    /// saying so (types whose pool sets no `queue_timeout_s` of its own); 0: never.
    pub queue_timeout_s: u64,
    /// Attempts of one task that may be lost (the control plane running them died) before the
    /// task fails instead of being queued again (1-100).
    pub max_lost_attempts: u32,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        Self {
            lease_ttl_ms: 15_000,
            default_timeout_ms: 60_000,
            default_max_attempts: 3,
            retry_base_ms: 200,
            retry_max_ms: 10_000,
            heartbeat_interval_ms: 2_000,
            heartbeat_timeout_ms: 10_000,
            claim_batch: 128,
            max_priority: MaxPriority::default(),
            fair_share: FairShareSection::default(),
            queue_timeout_s: 86_400,
            max_lost_attempts: 3,
        }
    }
}

/// `[telemetry]`: metrics and traces.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// Serve `/metrics` without an API key (for scrapers inside a trusted network); by default
    /// it needs a key of any role.
    pub metrics_public: bool,
    /// `[telemetry.otlp]`: export task traces over OTLP/HTTP; no exporter when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpSection>,
}

/// Validated `[telemetry]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Telemetry {
    pub metrics_public: bool,
    /// Where task traces go; `None`: traces are not exported.
    pub otlp: Option<Otlp>,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `human` or `json`.
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `flotilla_server=debug,info`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: "human".to_owned(),
            level: "info".to_owned(),
        }
    }
}

/// Validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub max_wait: Duration,
    /// `[server] trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `[server]` connection bounds.
    pub connections: Connections,
    pub database: Database,
    pub database_max_connections: u32,
    /// `[database] leader_lease_ms`.
    pub leader_lease: Duration,
    pub scheduler: Scheduler,
    pub log_format: LogFormat,
    pub log_level: String,
    pub fleet: Fleet,
    pub telemetry: Telemetry,
    pub alerting: Alerting,
    pub vault: Vault,
    pub rate_limits: RateLimits,
    /// `[audit]` retention: entries older than this are pruned; `None` keeps every entry.
    pub audit_retention: Option<Duration>,
    /// How often the leader prunes the audit log.
    pub audit_prune_interval: Duration,
    /// TLS on the API listener; plain HTTP when `None`.
    pub tls: Option<Tls>,
    /// TLS towards agents (`https` agent URLs, client certificate); `None`: plain HTTP only.
    pub agents_tls: Option<AgentsTls>,
    /// Which addresses agent instances may be called at (`[agents_egress]`).
    pub agents_egress: crate::egress::EgressPolicy,
    pub pools: Vec<Pool>,
    /// The model gateway: providers, models, ledger and limits.
    pub gateway: Gateway,
}

impl Config {
    /// The `[[pools]]` entry of an agent type, if one is configured.
    pub fn pool(&self, agent_type: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == agent_type)
    }
}

/// Which store to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

/// Validated `[scheduler]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduler {
    pub lease_ttl: Duration,
    pub default_timeout: Duration,
    pub default_max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub claim_batch: u32,
    /// `[scheduler.max_priority]`.
    pub max_priority: MaxPriority,
    /// `[scheduler.fair_share]`.
    pub fair_share: FairShareConfig,
    /// Default queue timeout; `None`: queued tasks wait for ever.
    pub queue_timeout: Option<Duration>,
    pub max_lost_attempts: u32,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Why a configuration was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or does not fit the schema (the message names line and key).
    #[error("{source_name}: {message}")]
    File {
        source_name: String,
        message: String,
    },
    /// An environment variable names no setting or has a value of the wrong type.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// A setting has a value outside its range.
    #[error("setting `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// Prefix of environment variables that override settings: `FLOTILLA_SERVER__LISTEN` sets
/// `server.listen`. Variables without a `__` (such as `FLOTILLA_BOOTSTRAP_ADMIN_KEY`) are not
/// settings and are ignored here.
pub const ENV_PREFIX: &str = "FLOTILLA_";

/// A dotted setting path and its value, e.g. from a command-line flag.
pub type Override = (String, toml::Value);

/// Builds the configuration from a file's text (with a name for messages), the environment's
/// variables and command-line overrides, in that order of precedence (last wins).
pub fn load(
    file: Option<(&str, &str)>,
    env: &[(String, String)],
    flags: &[Override],
) -> Result<Config, ConfigError> {
    let mut table = match file {
        Some((name, text)) => {
            // Deserialising straight from the text first gives errors with line and column.
            toml::from_str::<ConfigFile>(text).map_err(|e| ConfigError::File {
                source_name: name.to_owned(),
                message: e.to_string(),
            })?;
            toml::from_str::<toml::Table>(text).map_err(|e| ConfigError::File {
                source_name: name.to_owned(),
                message: e.to_string(),
            })?
        }
        None => toml::Table::new(),
    };
    for (var, value) in env {
        let Some(path) = env_path(var) else { continue };
        set_path(&mut table, &path, parse_env_value(value));
        check(&table).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
    }
    for (path, value) in flags {
        let path: Vec<String> = path.split('.').map(str::to_owned).collect();
        set_path(&mut table, &path, value.clone());
    }
    let raw = check(&table).map_err(|message| ConfigError::Invalid {
        key: "flags".to_owned(),
        message,
    })?;
    validate(raw)
}

/// Turns `FLOTILLA_SCHEDULER__LEASE_TTL_MS` into `["scheduler", "lease_ttl_ms"]`.
fn env_path(var: &str) -> Option<Vec<String>> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    rest.contains("__")
        .then(|| rest.split("__").map(str::to_ascii_lowercase).collect())
}

/// Environment values are TOML scalars when they parse as one (numbers, booleans), else strings.
fn parse_env_value(value: &str) -> toml::Value {
    let doc = format!("v = {value}");
    match toml::from_str::<toml::Table>(&doc)
        .ok()
        .and_then(|mut t| t.remove("v"))
    {
        Some(v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_))) => v,
        _ => toml::Value::String(value.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert(last.clone(), value);
}

fn check(table: &toml::Table) -> Result<ConfigFile, String> {
    let value = toml::Value::Table(table.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

fn positive_ms(key: &str, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(Duration::from_millis(ms))
}

/// Checks ranges and turns the file's form into the runtime form.
pub fn validate(raw: ConfigFile) -> Result<Config, ConfigError> {
    let listen = raw.server.listen.parse::<SocketAddr>().map_err(|e| {
        invalid(
            "server.listen",
            format!(
                "`{}` is not an address such as 127.0.0.1:8080: {e}",
                raw.server.listen
            ),
        )
    })?;
    if raw.server.max_body_bytes == 0 {
        return Err(invalid("server.max_body_bytes", "must be greater than 0"));
    }
    let database = match raw.database.url.as_str() {
        "" => Database::Sqlite(raw.server.data_dir.join("flotilla.db")),
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Database::Postgres(url.to_owned())
        }
        url => match url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Some(path) if !path.is_empty() => Database::Sqlite(PathBuf::from(path)),
            _ => {
                return Err(invalid(
                    "database.url",
                    "must start with postgres:// or sqlite://",
                ));
            }
        },
    };
    if raw.database.max_connections == 0 {
        return Err(invalid("database.max_connections", "must be at least 1"));
    }
    let leader_lease = positive_ms("database.leader_lease_ms", raw.database.leader_lease_ms)?;
    if leader_lease < Duration::from_millis(300) {
        return Err(invalid("database.leader_lease_ms", "must be at least 300"));
    }
    let s = &raw.scheduler;
    let lease_ttl = positive_ms("scheduler.lease_ttl_ms", s.lease_ttl_ms)?;
    if lease_ttl < Duration::from_millis(500) {
        return Err(invalid("scheduler.lease_ttl_ms", "must be at least 500"));
    }
    let heartbeat_interval =
        positive_ms("scheduler.heartbeat_interval_ms", s.heartbeat_interval_ms)?;
    let heartbeat_timeout = positive_ms("scheduler.heartbeat_timeout_ms", s.heartbeat_timeout_ms)?;
    // Agents are told the interval in whole seconds (docs/design.md §6), so the timeout must exceed
    // what they are told, not only what is configured.
    if heartbeat_timeout <= Duration::from_secs(announced_interval_s(heartbeat_interval)) {
        return Err(invalid(
            "scheduler.heartbeat_timeout_ms",
            "must be longer than the heartbeat interval as announced to agents (whole seconds, at least 1)",
        ));
    }
    let max_attempts = |key: &str, n: u32| {
        if (1..=100).contains(&n) {
            Ok(n)
        } else {
            Err(invalid(key, "must be between 1 and 100"))
        }
    };
    let scheduler = Scheduler {
        lease_ttl,
        default_timeout: positive_ms("scheduler.default_timeout_ms", s.default_timeout_ms)?,
        default_max_attempts: max_attempts(
            "scheduler.default_max_attempts",
            s.default_max_attempts,
        )?,
        retry_base: positive_ms("scheduler.retry_base_ms", s.retry_base_ms)?,
        retry_max: positive_ms("scheduler.retry_max_ms", s.retry_max_ms)?,
        heartbeat_interval,
        heartbeat_timeout,
        claim_batch: if (1..=10_000).contains(&s.claim_batch) {
            s.claim_batch
        } else {
            return Err(invalid(
                "scheduler.claim_batch",
                "must be between 1 and 10000",
            ));
        },
        max_priority: priority::validate(&s.max_priority)?,
        fair_share: fair_share::validate(&s.fair_share)?,
        queue_timeout: pool::queue_timeout("scheduler.queue_timeout_s", s.queue_timeout_s)?,
        max_lost_attempts: max_attempts("scheduler.max_lost_attempts", s.max_lost_attempts)?,
    };
    let log_format = match raw.log.format.as_str() {
        "human" => LogFormat::Human,
        "json" => LogFormat::Json,
        other => {
            return Err(invalid(
                "log.format",
                format!("`{other}` is not `human` or `json`"),
            ));
        }
    };
    let mut pools: Vec<Pool> = Vec::with_capacity(raw.pools.len());
    for (i, section) in raw.pools.iter().enumerate() {
        let key = format!("pools[{i}]");
        let pool = pool::validate_pool(section, &key)?;
        if pools.iter().any(|p| p.name == pool.name) {
            return Err(invalid(
                &format!("{key}.name"),
                format!("pool `{}` is declared twice", pool.name),
            ));
        }
        pools.push(pool);
    }
    let fleet = pool::validate_fleet(&raw.fleet)?;
    let connections = connections::validate(&raw.server)?;
    Ok(Config {
        listen,
        data_dir: raw.server.data_dir,
        max_body_bytes: raw.server.max_body_bytes,
        max_wait: Duration::from_secs(raw.server.max_wait_s),
        trusted_proxies: agents_egress::cidrs(
            "server.trusted_proxies",
            &raw.server.trusted_proxies,
        )?,
        connections,
        database,
        database_max_connections: raw.database.max_connections,
        leader_lease,
        scheduler,
        log_format,
        log_level: raw.log.level,
        fleet,
        telemetry: Telemetry {
            metrics_public: raw.telemetry.metrics_public,
            otlp: otlp::validate(raw.telemetry.otlp.as_ref())?,
        },
        alerting: alerting::validate(&raw.alerting, &raw.alerts)?,
        vault: vault::validate(&raw.vault)?,
        rate_limits: limits::validate(&raw.rate_limits)?,
        audit_retention: (raw.audit.retention_s > 0)
            .then(|| Duration::from_secs(raw.audit.retention_s)),
        audit_prune_interval: Duration::from_secs(raw.audit.prune_interval_s.max(1)),
        tls: tls::validate(&raw.tls)?,
        agents_tls: agents_tls::validate(&raw.agents_tls)?,
        agents_egress: agents_egress::validate(&raw.agents_egress)?,
        gateway: gateway::validate(&raw.gateway, &raw.providers, &raw.models)?,
        pools,
    })
}

/// The heartbeat interval announced to agents: whole seconds (rounded down, so agents beat at
/// least as often as configured), at least 1.
pub fn announced_interval_s(interval: Duration) -> u64 {
    interval.as_secs().max(1)
}

/// True for a well-formed agent type name: 1-64 characters of `a-z`, `0-9`, `_`, `-`.
pub fn valid_agent_type(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests;
