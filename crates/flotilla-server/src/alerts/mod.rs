//! The alert engine (docs/design.md §11): every `[alerting] interval_ms` it reads the built-in signals,
//! advances each (rule, dimension value) alert — one per agent type, model or tenant, or one in
//! total, as the rule's `by` says — with `flotilla_core::alert::step`, records every transition
//! as an `alert` fleet event whose subject is the dimension value (the history), and carries out
//! the rule's actions when an alert fires: `notify` (the configured webhooks, retried),
//! `scale_up` (one more instance of the affected pool), `emergency_mode` (shed low-priority
//! work) and `rate_limit` (hold the alert's tenant, or on a total the heaviest tenant, to a
//! tighter rate); the last two are undone when the alert resolves. A value that no longer has
//! data (a tenant whose tokens aged out, say) is evaluated as no data, so its alert resolves.

mod cycle;
mod signals;

pub(crate) use cycle::run;

use crate::auth::limits::RateLimiters;
use crate::clock::Clock;
use crate::fleet::events::EventSink;
use crate::fleet::provisioners::Provisioners;
use crate::fleet::registry::Registry;
use crate::gateway::Gateway;
use crate::notify::Notifications;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::recent::Recent;
use flotilla_core::Timestamp;
use flotilla_core::alert::{AlertRule, AlertState, Dimension};
use flotilla_core::config::Config;
use flotilla_core::id::TenantId;
pub(crate) use flotilla_core::wire::{ActiveAlert, AlertList, Silence};
use flotilla_store::DynStore;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;

/// (rule, dimension value: agent type, model or tenant id; `None` by total).
type Key = (String, Option<String>);

struct Tracked {
    state: AlertState,
    value: f64,
}

/// An alert's dimension value in the field of its dimension, as `ActiveAlert`, `Silence` and
/// notifications carry it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Subject {
    pub agent_type: Option<String>,
    pub model: Option<String>,
    pub tenant: Option<TenantId>,
}

impl Subject {
    /// The value of a rule's dimension in its field.
    pub(crate) fn of(by: Dimension, value: Option<&str>) -> Subject {
        let value = value.map(str::to_owned);
        match by {
            Dimension::AgentType => Subject {
                agent_type: value,
                ..Subject::default()
            },
            Dimension::Model => Subject {
                model: value,
                ..Subject::default()
            },
            Dimension::Tenant => Subject {
                tenant: value.and_then(|v| v.parse().ok()),
                ..Subject::default()
            },
            Dimension::Total => Subject::default(),
        }
    }

    /// The value of `by`'s field, as text.
    fn value(&self, by: Dimension) -> Option<String> {
        match by {
            Dimension::AgentType => self.agent_type.clone(),
            Dimension::Model => self.model.clone(),
            Dimension::Tenant => self.tenant.map(|t| t.to_string()),
            Dimension::Total => None,
        }
    }
}

/// How messages name an alert's value: ` [code_generator]`, ` [model gpt-4o]`, ` [tenant …]`.
fn scope_text(by: Dimension, value: Option<&str>) -> String {
    match (by, value) {
        (_, None) | (Dimension::Total, _) => String::new(),
        (Dimension::AgentType, Some(v)) => format!(" [{v}]"),
        (by, Some(v)) => format!(" [{} {v}]", by.as_str()),
    }
}

/// The alert engine's handles: what it reads (signals) and what its actions act on. Built once
/// by the composition root; its loop runs on the leader only.
pub(crate) struct Alerts {
    pub config: Arc<Config>,
    pub store: DynStore,
    pub clock: Arc<dyn Clock>,
    /// Every alert's state, shared with the API.
    pub engine: Arc<AlertEngine>,
    pub registry: Arc<Registry>,
    pub recent: Arc<Recent>,
    pub metrics: Arc<Metrics>,
    pub events: EventSink,
    /// The `rate_limit` action's target.
    pub limits: Arc<RateLimiters>,
    /// The `scale_up` action's target.
    pub provisioners: Arc<Provisioners>,
    /// Budget utilisation (a signal).
    pub gateway: Arc<Gateway>,
    /// The `notify` action's target.
    pub notifications: Arc<Notifications>,
    /// Tells the other control planes what the firing alerts do.
    pub cluster: crate::cluster::Notifier,
}

/// Every alert's state. Cheap to share behind an `Arc`.
#[derive(Default)]
pub(crate) struct AlertEngine {
    alerts: Mutex<HashMap<Key, Tracked>>,
    /// Firing alerts whose action is emergency mode, by alert, with what each sheds.
    emergencies: Mutex<BTreeMap<String, Emergency>>,
    silences: Mutex<Vec<Silence>>,
    /// Tenants held to a tighter rate by firing alerts (`rate_limit`), by alert.
    limited: Mutex<HashMap<String, TenantId>>,
    /// What the leader's firing alerts do, as this control plane last heard it (when it is not
    /// the leader; docs/design.md §9).
    adopted: Mutex<Effects>,
}

/// What firing alerts do to every control plane: shed low-priority work (the alerts in
/// emergency mode) and hold tenants to `[alerting] rate_limit`. The leader, which alone runs
/// the engine, tells the other control planes after every round that changed them and every
/// few seconds; a new leader starts from none.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Effects {
    pub emergency: Vec<Emergency>,
    pub limited: Vec<TenantId>,
}

/// One alert in emergency mode and what it sheds: new low-priority tasks of the agent type or
/// the tenant it alerted on; an alert by model or in total (a platform-wide rule) sheds every
/// type's and tenant's. (A leader before scoped emergencies sent the alert's name alone: that
/// reads as platform-wide, as it then was.)
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "EmergencyWire")]
pub(crate) struct Emergency {
    pub alert: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum EmergencyWire {
    Name(String),
    Scoped {
        alert: String,
        #[serde(default)]
        agent_type: Option<String>,
        #[serde(default)]
        tenant: Option<TenantId>,
    },
}

impl From<EmergencyWire> for Emergency {
    fn from(wire: EmergencyWire) -> Emergency {
        match wire {
            EmergencyWire::Name(alert) => Emergency {
                alert,
                ..Emergency::default()
            },
            EmergencyWire::Scoped {
                alert,
                agent_type,
                tenant,
            } => Emergency {
                alert,
                agent_type,
                tenant,
            },
        }
    }
}

impl Emergency {
    /// Whether it sheds new low-priority tasks of `agent_type` from `tenant`.
    pub(crate) fn sheds(&self, agent_type: &str, tenant: TenantId) -> bool {
        self.agent_type.as_deref().is_none_or(|t| t == agent_type)
            && self.tenant.is_none_or(|t| t == tenant)
    }

    /// Why a task it sheds is refused, and what to do instead.
    fn refusal(&self) -> String {
        let scope = match (&self.agent_type, self.tenant) {
            (Some(agent_type), _) => format!(" for agent type `{agent_type}`"),
            (None, Some(_)) => " for this tenant".to_owned(),
            (None, None) => String::new(),
        };
        format!(
            "emergency mode{scope} (alert {} is firing): new tasks of priority below \
             {EMERGENCY_MIN_PRIORITY} are refused until it resolves; retry then",
            self.alert
        )
    }
}

/// The alert board's document of pending and firing alerts, which the leader publishes after
/// each round for the other control planes' `GET /v1/alerts`.
pub(crate) const BOARD_ACTIVE: &str = "active";

/// How often the leader repeats its effects when they do not change (for replicas that
/// started or lost a notification meanwhile).
const REPEAT_EFFECTS: std::time::Duration = std::time::Duration::from_secs(5);

/// Work below this priority is shed in emergency mode.
pub(crate) const EMERGENCY_MIN_PRIORITY: i32 = 5;

impl AlertEngine {
    /// Adds a silence.
    pub(crate) fn silence(&self, silence: Silence) {
        if let Ok(mut silences) = self.silences.lock() {
            silences.push(silence);
        }
    }

    /// Active silences at `now` (expired ones are dropped).
    pub(crate) fn silences(&self, now: Timestamp) -> Vec<Silence> {
        let Ok(mut silences) = self.silences.lock() else {
            return Vec::new();
        };
        silences.retain(|s| s.until > now);
        silences.clone()
    }

    /// Replaces the silences with the stored ones (every control plane's).
    fn replace_silences(&self, stored: Vec<Silence>) {
        if let Ok(mut silences) = self.silences.lock() {
            *silences = stored;
        }
    }

    /// Removes a silence and returns it; `None` when there is none with this id.
    pub(crate) fn unsilence(&self, id: uuid::Uuid) -> Option<Silence> {
        let mut silences = self.silences.lock().ok()?;
        let i = silences.iter().position(|s| s.id == id)?;
        Some(silences.remove(i))
    }

    /// Until when an alert's actions are muted, if they are: a silence of its rule that names
    /// no value of the rule's dimension, or this alert's.
    fn silenced_until(
        &self,
        rule: &AlertRule,
        value: Option<&str>,
        now: Timestamp,
    ) -> Option<Timestamp> {
        self.silences(now)
            .into_iter()
            .filter(|s| {
                let only = Subject {
                    agent_type: s.agent_type.clone(),
                    model: s.model.clone(),
                    tenant: s.tenant,
                }
                .value(rule.by);
                s.rule == rule.name && (only.is_none() || only.as_deref() == value)
            })
            .map(|s| s.until)
            .max()
    }

    /// What this control plane's engine does now (on the leader: what to tell the others).
    fn effects(&self) -> Effects {
        let emergency = self
            .emergencies
            .lock()
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default();
        let mut limited: Vec<TenantId> = self
            .limited
            .lock()
            .map(|l| l.values().copied().collect())
            .unwrap_or_default();
        limited.sort();
        limited.dedup();
        Effects { emergency, limited }
    }

    /// Takes on the leader's effects in place of the last ones heard (releasing tenants no
    /// longer limited); `Effects::default()` drops them all.
    pub(crate) fn adopt(
        &self,
        effects: Effects,
        limits: &crate::auth::limits::RateLimiters,
        rate: flotilla_core::rate::Rate,
    ) {
        let Ok(mut adopted) = self.adopted.lock() else {
            return;
        };
        if *adopted == effects {
            return;
        }
        for tenant in &adopted.limited {
            if !effects.limited.contains(tenant) {
                limits.impose(*tenant, None);
            }
        }
        for tenant in &effects.limited {
            limits.impose(*tenant, Some(rate));
        }
        *adopted = effects;
    }

    /// Why a new low-priority task of `agent_type` from `tenant` is refused now, if it is.
    pub(crate) fn emergency(&self, agent_type: &str, tenant: TenantId) -> Option<String> {
        if let Ok(emergencies) = self.emergencies.lock()
            && let Some(e) = emergencies.values().find(|e| e.sheds(agent_type, tenant))
        {
            return Some(e.refusal());
        }
        let adopted = self.adopted.lock().ok()?;
        adopted
            .emergency
            .iter()
            .find(|e| e.sheds(agent_type, tenant))
            .map(Emergency::refusal)
    }

    fn set_emergency(&self, emergency: Emergency, on: bool) -> bool {
        let Ok(mut emergencies) = self.emergencies.lock() else {
            return false;
        };
        if on {
            emergencies
                .insert(emergency.alert.clone(), emergency)
                .is_none()
        } else {
            emergencies.remove(&emergency.alert).is_some()
        }
    }

    /// Pending and firing alerts, firing first, then by rule and dimension value.
    pub(crate) fn active(&self, rules: &[AlertRule]) -> Vec<ActiveAlert> {
        let Ok(alerts) = self.alerts.lock() else {
            return Vec::new();
        };
        let mut out: Vec<ActiveAlert> = alerts
            .iter()
            .filter_map(|((name, value), t)| {
                let rule = rules.iter().find(|r| &r.name == name)?;
                let (state, since) = match t.state {
                    AlertState::Inactive => return None,
                    AlertState::Pending { since } => ("pending", since),
                    AlertState::Firing { since, .. } => ("firing", since),
                };
                let subject = Subject::of(rule.by, value.as_deref());
                Some(ActiveAlert {
                    rule: name.clone(),
                    by: rule.by,
                    agent_type: subject.agent_type,
                    model: subject.model,
                    tenant: subject.tenant,
                    state: state.to_owned(),
                    severity: rule.severity,
                    signal: rule.signal,
                    comparison: rule.comparison.as_str().to_owned(),
                    threshold: rule.threshold,
                    value: t.value,
                    since,
                    labels: rule.labels.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| {
            (
                b.state == "firing",
                &a.rule,
                &a.agent_type,
                &a.model,
                a.tenant,
            )
                .cmp(&(
                    a.state == "firing",
                    &b.rule,
                    &b.agent_type,
                    &b.model,
                    b.tenant,
                ))
        });
        out
    }
}

/// The silences in force, as stored (every control plane's); unreadable ones are logged and
/// skipped.
pub(crate) async fn stored_silences(
    store: &DynStore,
    now: Timestamp,
) -> Result<Vec<Silence>, flotilla_store::StoreError> {
    let bodies = store.list_silences(now).await?;
    Ok(bodies
        .iter()
        .filter_map(|body| match serde_json::from_str(body) {
            Ok(silence) => Some(silence),
            Err(e) => {
                tracing::warn!(error = %e, "A stored silence is unreadable; ignored");
                None
            }
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_emergency_sheds_only_what_alerted() {
        let a = TenantId(uuid::Uuid::from_u128(1));
        let b = TenantId(uuid::Uuid::from_u128(2));
        let by_type = Emergency {
            alert: "overload [parked]".to_owned(),
            agent_type: Some("parked".to_owned()),
            tenant: None,
        };
        assert!(by_type.sheds("parked", a) && by_type.sheds("parked", b));
        assert!(!by_type.sheds("other", a));
        let by_tenant = Emergency {
            alert: "spend (tenant a)".to_owned(),
            agent_type: None,
            tenant: Some(a),
        };
        assert!(by_tenant.sheds("parked", a) && !by_tenant.sheds("parked", b));
        let total = Emergency {
            alert: "errors (all)".to_owned(),
            ..Emergency::default()
        };
        assert!(total.sheds("parked", b) && total.sheds("other", a));
    }

    #[test]
    fn effects_read_a_scoped_emergency_or_an_older_leaders_name() {
        let effects = Effects {
            emergency: vec![Emergency {
                alert: "overload [parked]".to_owned(),
                agent_type: Some("parked".to_owned()),
                tenant: None,
            }],
            limited: Vec::new(),
        };
        let json = serde_json::to_string(&effects).unwrap();
        assert_eq!(serde_json::from_str::<Effects>(&json).unwrap(), effects);
        let older: Effects =
            serde_json::from_str(r#"{"emergency": ["overload [parked]"], "limited": []}"#).unwrap();
        assert_eq!(older.emergency[0].alert, "overload [parked]");
        assert!(older.emergency[0].sheds("any", TenantId::DEFAULT));
    }
}
