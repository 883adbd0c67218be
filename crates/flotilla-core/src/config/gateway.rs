//! `[gateway]`, `[providers.NAME]` and `[[models]]`: the model gateway (docs/design.md §7).

use super::{ConfigError, invalid, positive_ms};
use crate::model::{
    DEFAULT_FALLBACK_ON, DEFAULT_MAX_OUTPUT_TOKENS, ModelSpec, SIMULATED_PROVIDER, default_models,
};
use crate::money::Money;
use crate::usage::Prices;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `[gateway]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Serve the shipped model table (gpt-5, gpt-4o, claude-opus-4.1, claude-sonnet-3.5,
    /// gemini-2.0-flash on the `simulated` provider) besides `[[models]]`; a `[[models]]` entry
    /// with the same name replaces the shipped one.
    pub default_models: bool,
    /// How often the usage ledger writes its batch; a crash loses at most this much usage.
    pub usage_flush_ms: u64,
    /// Thresholds (percent of the limit) of budgets created without their own.
    pub default_thresholds: Vec<u32>,
    /// Model calls per minute per tenant (0: no limit).
    pub tenant_requests_per_minute: u32,
    /// Tokens per minute per tenant, reserved from `max_tokens` and reconciled (0: no limit).
    pub tenant_tokens_per_minute: u64,
    /// Model calls per minute per key (0: no limit).
    pub key_requests_per_minute: u32,
    /// Tokens per minute per key (0: no limit).
    pub key_tokens_per_minute: u64,
    /// Most a tenant may spend on models in any rolling hour, in dollars (`off`: no cap).
    pub tenant_cost_per_hour: String,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            default_models: true,
            usage_flush_ms: 1000,
            default_thresholds: vec![50, 80, 90, 100],
            tenant_requests_per_minute: 0,
            tenant_tokens_per_minute: 0,
            key_requests_per_minute: 0,
            key_tokens_per_minute: 0,
            tenant_cost_per_hour: "off".to_owned(),
        }
    }
}

/// `[providers.NAME]`: an upstream model API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSection {
    /// `openai` (any OpenAI-compatible HTTP API) or `simulated` (built in, for demos and tests:
    /// deterministic answers that say they are simulated).
    pub kind: String,
    /// Base URL of an `openai` provider, up to and including the version, e.g.
    /// `https://api.openai.com/v1`.
    pub base_url: String,
    /// The provider's API key as a vault reference (`secret://providers/openai`, a secret of
    /// the default tenant) or an environment reference (`env:OPENAI_API_KEY`); never the key
    /// itself. Empty: no `Authorization` header.
    pub api_key: String,
    /// Time to open a connection.
    pub connect_timeout_ms: u64,
    /// Time from sending the request to the first byte of the answer (the first token of a
    /// stream).
    pub first_token_timeout_ms: u64,
    /// Time for the whole answer.
    pub timeout_ms: u64,
    /// Retries of a failed call on the same model before falling back (statuses in the model's
    /// `fallback_on`, timeouts, connection errors).
    pub max_retries: u32,
    /// First retry backoff; doubles each retry, with full jitter.
    pub retry_base_ms: u64,
    /// `simulated` only: time to the first token.
    pub latency_ms: u64,
    /// `simulated` only: streamed tokens per second after the first (0: all at once).
    pub tokens_per_second: u32,
}

impl Default for ProviderSection {
    fn default() -> Self {
        Self {
            kind: "openai".to_owned(),
            base_url: String::new(),
            api_key: String::new(),
            connect_timeout_ms: 5_000,
            first_token_timeout_ms: 60_000,
            timeout_ms: 600_000,
            max_retries: 2,
            retry_base_ms: 250,
            latency_ms: 20,
            tokens_per_second: 0,
        }
    }
}

/// `[[models]]`: a model callers may name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// The name callers use in `model`.
    pub name: String,
    /// The `[providers.NAME]` that serves it, or `simulated`.
    pub provider: String,
    /// The model's name at the provider (default: `name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Prices in dollars per million tokens: `input`, `cached_input`, `output`, `reasoning`.
    /// A price left out is unknown, and calls that need it are recorded with an unknown cost.
    pub prices: Prices,
    /// Quality score from 0 to 1.
    pub quality: f64,
    /// Speed score from 0 to 1.
    pub speed: f64,
    /// Models to try in order when this one keeps failing.
    pub fallbacks: Vec<String>,
    /// Upstream statuses that are retried and fall back (default 408, 429, 500, 502, 503, 504;
    /// timeouts and connection errors always are).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_on: Option<Vec<u16>>,
    /// The cheaper model a `downgrade` budget switches to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downgrade_to: Option<String>,
    /// Output tokens assumed when a request sets no maximum (budget reservation, token limits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_max_output_tokens: Option<u64>,
    /// Prices it lacks count as $0 for budgets: without this, tenants with a budget may not
    /// call a model whose price is unknown (or a fallback whose is).
    pub free: bool,
}

/// Validated gateway settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Gateway {
    pub providers: BTreeMap<String, Provider>,
    /// Every model served, shipped defaults first (unless replaced), then configured ones.
    pub models: Vec<ModelSpec>,
    pub usage_flush: Duration,
    pub default_thresholds: Vec<u32>,
    pub limits: GatewayLimits,
}

impl Gateway {
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// Per-minute limits of model calls; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayLimits {
    pub tenant_requests_per_minute: Option<u32>,
    pub tenant_tokens_per_minute: Option<u64>,
    pub key_requests_per_minute: Option<u32>,
    pub key_tokens_per_minute: Option<u64>,
    pub tenant_cost_per_hour: Option<Money>,
}

/// A validated provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub connect_timeout: Duration,
    pub first_token_timeout: Duration,
    pub timeout: Duration,
    pub max_retries: u32,
    pub retry_base: Duration,
}

/// What kind of API a provider speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// An OpenAI-compatible HTTP API.
    OpenAi {
        /// Without a trailing slash.
        base_url: String,
        api_key: Option<ApiKeySource>,
    },
    /// The built-in simulated provider.
    Simulated {
        latency: Duration,
        tokens_per_second: u32,
    },
}

/// Where a provider's API key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiKeySource {
    /// A vault reference `secret://…` (of the default tenant), resolved at use.
    Vault(String),
    /// An environment variable of the control plane.
    Env(String),
}

fn validate_provider(name: &str, raw: &ProviderSection) -> Result<Provider, ConfigError> {
    let key = |field: &str| format!("providers.{name}.{field}");
    if !crate::config::valid_agent_type(name) {
        return Err(invalid(
            &format!("providers.{name}"),
            "provider names are 1-64 characters of a-z, 0-9, `_` and `-`",
        ));
    }
    let kind = match raw.kind.as_str() {
        "openai" => {
            let base_url = raw.base_url.trim_end_matches('/').to_owned();
            let parsed = url_scheme(&base_url);
            if !matches!(parsed, Some("http" | "https")) {
                return Err(invalid(
                    &key("base_url"),
                    "must be an http:// or https:// URL such as https://api.openai.com/v1",
                ));
            }
            let api_key = match raw.api_key.trim() {
                "" => None,
                k if k.starts_with("secret://") => Some(ApiKeySource::Vault(k.to_owned())),
                k => match k.strip_prefix("env:") {
                    Some(var)
                        if !var.is_empty()
                            && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                    {
                        Some(ApiKeySource::Env(var.to_owned()))
                    }
                    _ => {
                        return Err(invalid(
                            &key("api_key"),
                            "must be a vault reference `secret://path` or an environment reference `env:NAME`, never the key itself",
                        ));
                    }
                },
            };
            ProviderKind::OpenAi { base_url, api_key }
        }
        "simulated" => ProviderKind::Simulated {
            latency: Duration::from_millis(raw.latency_ms),
            tokens_per_second: raw.tokens_per_second,
        },
        other => {
            return Err(invalid(
                &key("kind"),
                format!("`{other}` is not `openai` or `simulated`"),
            ));
        }
    };
    if raw.max_retries > 10 {
        return Err(invalid(&key("max_retries"), "must be at most 10"));
    }
    Ok(Provider {
        name: name.to_owned(),
        kind,
        connect_timeout: positive_ms(&key("connect_timeout_ms"), raw.connect_timeout_ms)?,
        first_token_timeout: positive_ms(
            &key("first_token_timeout_ms"),
            raw.first_token_timeout_ms,
        )?,
        timeout: positive_ms(&key("timeout_ms"), raw.timeout_ms)?,
        max_retries: raw.max_retries,
        retry_base: positive_ms(&key("retry_base_ms"), raw.retry_base_ms)?,
    })
}

fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    (!rest.is_empty() && !rest.starts_with('/')).then_some(scheme)
}

fn validate_model(i: usize, raw: &ModelSection) -> Result<ModelSpec, ConfigError> {
    let key = |field: &str| format!("models[{i}].{field}");
    if raw.name.is_empty()
        || raw.name.len() > 128
        || !raw
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b))
    {
        return Err(invalid(
            &key("name"),
            "must be 1-128 characters of letters, digits and `-_.:/@`",
        ));
    }
    if raw.name == "auto" {
        return Err(invalid(
            &key("name"),
            "`auto` is reserved: it asks the gateway to choose",
        ));
    }
    for (field, v) in [("quality", raw.quality), ("speed", raw.speed)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(invalid(&key(field), "must be between 0 and 1"));
        }
    }
    let max_out = raw
        .default_max_output_tokens
        .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
    if max_out == 0 {
        return Err(invalid(
            &key("default_max_output_tokens"),
            "must be greater than 0",
        ));
    }
    Ok(ModelSpec {
        name: raw.name.clone(),
        provider: raw.provider.clone(),
        upstream: raw.upstream.clone().unwrap_or_else(|| raw.name.clone()),
        prices: raw.prices,
        quality: raw.quality,
        speed: raw.speed,
        fallbacks: raw.fallbacks.clone(),
        fallback_on: raw
            .fallback_on
            .clone()
            .unwrap_or_else(|| DEFAULT_FALLBACK_ON.to_vec()),
        downgrade_to: raw.downgrade_to.clone(),
        default_max_output_tokens: max_out,
        free: raw.free,
    })
}

pub(super) fn validate(
    raw: &GatewaySection,
    providers: &BTreeMap<String, ProviderSection>,
    models: &[ModelSection],
) -> Result<Gateway, ConfigError> {
    let mut valid_providers = BTreeMap::new();
    // The simulated provider always exists; `[providers.simulated]` may tune it.
    valid_providers.insert(
        SIMULATED_PROVIDER.to_owned(),
        validate_provider(
            SIMULATED_PROVIDER,
            &ProviderSection {
                kind: "simulated".to_owned(),
                ..ProviderSection::default()
            },
        )?,
    );
    for (name, section) in providers {
        let provider = if name == SIMULATED_PROVIDER {
            // The built-in name always means the built-in provider; only its tuning is read.
            validate_provider(
                name,
                &ProviderSection {
                    kind: "simulated".to_owned(),
                    ..section.clone()
                },
            )?
        } else {
            validate_provider(name, section)?
        };
        valid_providers.insert(name.clone(), provider);
    }
    let mut all: Vec<ModelSpec> = if raw.default_models {
        default_models()
            .into_iter()
            .filter(|d| !models.iter().any(|m| m.name == d.name))
            .collect()
    } else {
        Vec::new()
    };
    for (i, section) in models.iter().enumerate() {
        let spec = validate_model(i, section)?;
        if all.iter().any(|m| m.name == spec.name) {
            return Err(invalid(
                &format!("models[{i}].name"),
                format!("model `{}` is declared twice", spec.name),
            ));
        }
        if !valid_providers.contains_key(&spec.provider) {
            return Err(invalid(
                &format!("models[{i}].provider"),
                format!(
                    "`{}` is not a configured provider (add `[providers.{}]`, or use `simulated`)",
                    spec.provider, spec.provider
                ),
            ));
        }
        all.push(spec);
    }
    for m in &all {
        let at = models.iter().position(|s| s.name == m.name).map_or_else(
            || format!("gateway.default_models ({})", m.name),
            |j| format!("models[{j}]"),
        );
        for f in &m.fallbacks {
            if f == &m.name || !all.iter().any(|o| &o.name == f) {
                return Err(invalid(
                    &format!("{at}.fallbacks"),
                    format!("`{f}` is not another configured model"),
                ));
            }
        }
        if let Some(d) = &m.downgrade_to
            && (d == &m.name || !all.iter().any(|o| &o.name == d))
        {
            return Err(invalid(
                &format!("{at}.downgrade_to"),
                format!("`{d}` is not another configured model"),
            ));
        }
    }
    if raw.usage_flush_ms == 0 || raw.usage_flush_ms > 60_000 {
        return Err(invalid(
            "gateway.usage_flush_ms",
            "must be between 1 and 60000",
        ));
    }
    let mut thresholds = raw.default_thresholds.clone();
    thresholds.sort_unstable();
    thresholds.dedup();
    if thresholds.iter().any(|t| *t == 0 || *t > 1000) {
        return Err(invalid(
            "gateway.default_thresholds",
            "each threshold must be a percentage between 1 and 1000",
        ));
    }
    let nonzero32 = |n: u32| (n > 0).then_some(n);
    let nonzero64 = |n: u64| (n > 0).then_some(n);
    let cost = match raw.tenant_cost_per_hour.trim() {
        "off" | "" => None,
        text => Some(
            text.parse::<Money>()
                .map_err(|e| invalid("gateway.tenant_cost_per_hour", format!("{e}, or `off`")))?,
        ),
    };
    Ok(Gateway {
        providers: valid_providers,
        models: all,
        usage_flush: Duration::from_millis(raw.usage_flush_ms),
        default_thresholds: thresholds,
        limits: GatewayLimits {
            tenant_requests_per_minute: nonzero32(raw.tenant_requests_per_minute),
            tenant_tokens_per_minute: nonzero64(raw.tenant_tokens_per_minute),
            key_requests_per_minute: nonzero32(raw.key_requests_per_minute),
            key_tokens_per_minute: nonzero64(raw.key_tokens_per_minute),
            tenant_cost_per_hour: cost,
        },
    })
}
