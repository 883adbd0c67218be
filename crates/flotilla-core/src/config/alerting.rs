//! `[alerting]` and `[[alerts]]`: the alert engine's rules and where notifications go.

use super::{ConfigError, invalid, positive_ms};
use crate::alert::{
    Action, AlertRule, Comparison, Dimension, ScopeRequest, Severity, Signal, default_rules, scope,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `[alerting]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingSection {
    /// How often every rule is evaluated.
    pub interval_ms: u64,
    /// Include the classic four rules (docs/design.md §11) besides `[[alerts]]`.
    pub default_rules: bool,
    /// Where `notify` actions send alerts.
    pub webhooks: Vec<WebhookSection>,
    /// E-mail recipients of `notify` actions, through an SMTP server.
    pub emails: Vec<EmailSection>,
    /// The rate a `rate_limit` action holds a tenant to while its alert fires.
    pub rate_limit: String,
}

/// `[[alerting.emails]]`: alert mail through an SMTP server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailSection {
    /// SMTP server host name (or address).
    pub server: String,
    pub port: u16,
    /// `starttls` (upgrade a plain connection; refused if the server cannot), `tls` (implicit
    /// TLS, usually port 465) or `none` (only for a relay on the same host).
    pub tls: String,
    /// Empty: no authentication.
    pub username: String,
    pub password: String,
    pub from: String,
    pub to: Vec<String>,
    /// PEM file of an extra CA to trust for the server's certificate (private CAs).
    pub ca_file: String,
}

impl Default for EmailSection {
    fn default() -> Self {
        Self {
            server: String::new(),
            port: 587,
            tls: "starttls".to_owned(),
            username: String::new(),
            password: String::new(),
            from: String::new(),
            to: Vec::new(),
            ca_file: String::new(),
        }
    }
}

/// How an SMTP connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    StartTls,
    Implicit,
    None,
}

/// A validated e-mail notifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Email {
    pub server: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// (user, password) when authentication is configured.
    pub credentials: Option<(String, String)>,
    pub from: String,
    pub to: Vec<String>,
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("server", &self.server)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

impl Default for AlertingSection {
    fn default() -> Self {
        Self {
            interval_ms: 15_000,
            default_rules: true,
            webhooks: Vec::new(),
            emails: Vec::new(),
            rate_limit: "10/s".to_owned(),
        }
    }
}

/// `[[alerting.webhooks]]`: an HTTP receiver of alert notifications.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSection {
    pub url: String,
    /// `json` (Flotilla's own body, signed when `secret` is set), `slack` (an incoming
    /// webhook's attachment, coloured by severity) or `pagerduty` (Events API v2: trigger on
    /// firing, resolve on resolved, one dedup key per rule and agent type; `url` is
    /// `https://events.pagerduty.com/v2/enqueue`).
    pub format: String,
    /// HMAC-SHA256 key of the `x-flotilla-signature` header (json format).
    pub secret: String,
    /// PagerDuty integration (routing) key (pagerduty format).
    pub routing_key: String,
}

/// `[[alerts]]`: one rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSection {
    pub name: String,
    /// `success_rate`, `error_rate`, `p95_response_time` (seconds), `queue_length`,
    /// `hourly_tokens`, `healthy_instances` or `budget_utilisation`.
    pub signal: Signal,
    /// What the alerts are split by: `agent_type`, `model`, `tenant` or `total`, as the signal
    /// allows; absent: the signal's default (`total` for `hourly_tokens`, `tenant` for
    /// `budget_utilisation`, else `agent_type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Dimension>,
    /// Only this agent type (implies `by = "agent_type"`); absent: every type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// Only this model (implies `by = "model"`); absent: every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Only this tenant, by id (implies `by = "tenant"`); absent: every tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `<`, `<=`, `>` or `>=`.
    pub comparison: Comparison,
    pub threshold: f64,
    /// How long the breach must hold, e.g. `"5m"`; `"0s"` fires at once.
    #[serde(rename = "for")]
    pub for_: String,
    /// `info`, `warning` or `critical`.
    pub severity: Severity,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `notify`, `scale_up` (rules by agent type), `emergency_mode`, `rate_limit` (rules by
    /// tenant, or `hourly_tokens` by total).
    #[serde(default = "default_actions")]
    pub actions: Vec<Action>,
}

fn default_actions() -> Vec<Action> {
    vec![Action::Notify]
}

/// How a webhook's body is shaped.
#[derive(Clone, PartialEq, Eq)]
pub enum WebhookFormat {
    Json,
    Slack,
    PagerDuty { routing_key: String },
}

/// A validated webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub format: WebhookFormat,
    pub secret: Option<String>,
}

impl std::fmt::Debug for WebhookFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WebhookFormat::Json => "Json",
            WebhookFormat::Slack => "Slack",
            WebhookFormat::PagerDuty { .. } => "PagerDuty",
        })
    }
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("format", &self.format)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Validated alerting settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Alerting {
    pub interval: Duration,
    pub rules: Vec<AlertRule>,
    /// What `rate_limit` actions hold a tenant to.
    pub rate_limit: crate::rate::Rate,
    pub webhooks: Vec<Webhook>,
    pub emails: Vec<Email>,
}

pub(super) fn validate(
    raw: &AlertingSection,
    alerts: &[AlertSection],
) -> Result<Alerting, ConfigError> {
    let mut rules = if raw.default_rules {
        default_rules()
    } else {
        Vec::new()
    };
    for (i, a) in alerts.iter().enumerate() {
        let key = |field: &str| format!("alerts[{i}].{field}");
        if a.name.is_empty() || a.name.len() > 64 {
            return Err(invalid(&key("name"), "must be 1-64 characters"));
        }
        if rules.iter().any(|r| r.name == a.name) {
            return Err(invalid(
                &key("name"),
                format!("rule `{}` is declared twice (or is a default rule)", a.name),
            ));
        }
        if !a.threshold.is_finite() {
            return Err(invalid(&key("threshold"), "must be a number"));
        }
        let (by, only) = scope(
            a.signal,
            &ScopeRequest {
                by: a.by,
                agent_type: a.agent_type.as_deref(),
                model: a.model.as_deref(),
                tenant: a.tenant.as_deref(),
            },
        )
        .map_err(|e| invalid(&key(e.key), format!("rule `{}`: {}", a.name, e.message)))?;
        if let Some(action) = a.actions.iter().find(|x| !x.applies_to(a.signal, by)) {
            let why = match action {
                Action::ScaleUp => {
                    "`scale_up` adds capacity to the alert's agent pool, so it needs `by = \"agent_type\"`"
                }
                _ => {
                    "`rate_limit` limits the alert's tenant (`by = \"tenant\"`) or, on `hourly_tokens` by total, the tenant that used the most tokens"
                }
            };
            return Err(invalid(
                &key("actions"),
                format!(
                    "rule `{}` ({} by {}): {why}",
                    a.name,
                    a.signal.as_str(),
                    by.as_str()
                ),
            ));
        }
        let for_ = humantime::parse_duration(&a.for_).map_err(|e| {
            invalid(
                &key("for"),
                format!("`{}` is not a duration such as \"5m\": {e}", a.for_),
            )
        })?;
        rules.push(AlertRule {
            name: a.name.clone(),
            signal: a.signal,
            by,
            only,
            comparison: a.comparison,
            threshold: a.threshold,
            for_,
            severity: a.severity,
            labels: a.labels.clone(),
            actions: a.actions.clone(),
        });
    }
    let mut webhooks = Vec::new();
    for (i, w) in raw.webhooks.iter().enumerate() {
        let key = |field: &str| format!("alerting.webhooks[{i}].{field}");
        if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
            return Err(invalid(&key("url"), "must be an http(s) URL"));
        }
        let format = match w.format.as_str() {
            "" | "json" => WebhookFormat::Json,
            "slack" => WebhookFormat::Slack,
            "pagerduty" if w.routing_key.is_empty() => {
                return Err(invalid(
                    &key("routing_key"),
                    "the pagerduty format needs the integration's routing key",
                ));
            }
            "pagerduty" => WebhookFormat::PagerDuty {
                routing_key: w.routing_key.clone(),
            },
            other => {
                return Err(invalid(
                    &key("format"),
                    format!("`{other}` is not `json`, `slack` or `pagerduty`"),
                ));
            }
        };
        webhooks.push(Webhook {
            url: w.url.clone(),
            format,
            secret: (!w.secret.is_empty()).then(|| w.secret.clone()),
        });
    }
    let mut emails = Vec::new();
    for (i, e) in raw.emails.iter().enumerate() {
        let key = |field: &str| format!("alerting.emails[{i}].{field}");
        if e.server.is_empty() {
            return Err(invalid(&key("server"), "must name the SMTP server"));
        }
        let tls = match e.tls.as_str() {
            "starttls" => SmtpTls::StartTls,
            "tls" => SmtpTls::Implicit,
            "none" => SmtpTls::None,
            other => {
                return Err(invalid(
                    &key("tls"),
                    format!("`{other}` is not `starttls`, `tls` or `none`"),
                ));
            }
        };
        if !e.from.contains('@') {
            return Err(invalid(&key("from"), "must be an e-mail address"));
        }
        if e.to.is_empty() || e.to.iter().any(|t| !t.contains('@')) {
            return Err(invalid(&key("to"), "must list at least one e-mail address"));
        }
        emails.push(Email {
            server: e.server.clone(),
            port: e.port,
            tls,
            credentials: (!e.username.is_empty()).then(|| (e.username.clone(), e.password.clone())),
            from: e.from.clone(),
            to: e.to.clone(),
            ca_file: (!e.ca_file.is_empty()).then(|| std::path::PathBuf::from(&e.ca_file)),
        });
    }
    Ok(Alerting {
        interval: positive_ms("alerting.interval_ms", raw.interval_ms)?,
        rate_limit: raw
            .rate_limit
            .parse()
            .map_err(|e| invalid("alerting.rate_limit", format!("{e}")))?,
        rules,
        webhooks,
        emails,
    })
}
