//! The alert engine (docs/design.md §11): every `[alerting] interval_ms` it reads the built-in signals,
//! advances each (rule, dimension value) alert — one per agent type, model or tenant, or one in
//! total, as the rule's `by` says — with `flotilla_core::alert::step`, records every transition
//! as an `alert` fleet event whose subject is the dimension value (the history), and carries out
//! the rule's actions when an alert fires: `notify` (the configured webhooks, retried),
//! `scale_up` (one more instance of the affected pool), `emergency_mode` (shed low-priority
//! work) and `rate_limit` (hold the alert's tenant, or on a total the heaviest tenant, to a
//! tighter rate); the last two are undone when the alert resolves. A value that no longer has
//! data (a tenant whose tokens aged out, say) is evaluated as no data, so its alert resolves.

pub mod notify;
mod signals;

use crate::app::AppState;
use flotilla_core::Timestamp;
use flotilla_core::alert::{Action, AlertRule, AlertState, Dimension, Transition, step};
use flotilla_core::event::EventKind;
use flotilla_core::id::TenantId;
pub use flotilla_core::wire::{ActiveAlert, AlertList, Silence};
use signals::Reading;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// (rule, dimension value: agent type, model or tenant id; `None` by total).
type Key = (String, Option<String>);

struct Tracked {
    state: AlertState,
    value: f64,
}

/// An alert's dimension value in the field of its dimension, as `ActiveAlert`, `Silence` and
/// notifications carry it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub agent_type: Option<String>,
    pub model: Option<String>,
    pub tenant: Option<TenantId>,
}

impl Subject {
    /// The value of a rule's dimension in its field.
    pub fn of(by: Dimension, value: Option<&str>) -> Subject {
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

/// Every alert's state. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct AlertEngine {
    alerts: Mutex<HashMap<Key, Tracked>>,
    /// Firing alerts whose action is emergency mode, with what they say.
    emergencies: Mutex<BTreeMap<String, String>>,
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
pub struct Effects {
    pub emergency: Vec<String>,
    pub limited: Vec<TenantId>,
}

/// The alert board's document of pending and firing alerts, which the leader publishes after
/// each round for the other control planes' `GET /v1/alerts`.
pub const BOARD_ACTIVE: &str = "active";

/// How often the leader repeats its effects when they do not change (for replicas that
/// started or lost a notification meanwhile).
const REPEAT_EFFECTS: std::time::Duration = std::time::Duration::from_secs(5);

/// Work below this priority is shed in emergency mode.
pub const EMERGENCY_MIN_PRIORITY: i32 = 5;

impl AlertEngine {
    /// Adds a silence.
    pub fn silence(&self, silence: Silence) {
        if let Ok(mut silences) = self.silences.lock() {
            silences.push(silence);
        }
    }

    /// Active silences at `now` (expired ones are dropped).
    pub fn silences(&self, now: Timestamp) -> Vec<Silence> {
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
    pub fn unsilence(&self, id: uuid::Uuid) -> Option<Silence> {
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
            .map(|e| e.keys().cloned().collect())
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
    pub fn adopt(
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

    /// Why new low-priority work is refused now, if it is.
    pub fn emergency(&self) -> Option<String> {
        let adopted = self
            .adopted
            .lock()
            .ok()
            .and_then(|a| a.emergency.first().cloned());
        let emergencies = self.emergencies.lock().ok()?;
        let alert = emergencies.keys().next().cloned().or(adopted)?;
        Some(format!(
            "emergency mode (alert {alert} is firing): tasks of priority below {EMERGENCY_MIN_PRIORITY} are refused until it resolves; retry later or raise the priority"
        ))
    }

    fn set_emergency(&self, alert: String, on: bool) -> bool {
        let Ok(mut emergencies) = self.emergencies.lock() else {
            return false;
        };
        if on {
            emergencies.insert(alert, String::new()).is_none()
        } else {
            emergencies.remove(&alert).is_some()
        }
    }

    /// Pending and firing alerts, firing first, then by rule and dimension value.
    pub fn active(&self, rules: &[AlertRule]) -> Vec<ActiveAlert> {
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
pub async fn stored_silences(state: &AppState) -> Result<Vec<Silence>, flotilla_store::StoreError> {
    let bodies = state.store.list_silences(state.clock.now()).await?;
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

/// Runs until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let config = &state.config.alerting;
    if config.rules.is_empty() {
        return;
    }
    // This control plane leads now: what it heard from the previous leader no longer holds.
    state.alerts.adopt(
        Effects::default(),
        &state.limits,
        state.config.alerting.rate_limit,
    );
    let mut told: Option<(Effects, std::time::Instant)> = None;
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Silences made on any control plane.
        match stored_silences(&state).await {
            Ok(stored) => state.alerts.replace_silences(stored),
            Err(e) => {
                tracing::warn!(error = %e, "Could not read the silences; keeping the last ones")
            }
        }
        let values = signals::read(&state).await;
        let now = state.clock.now();
        for rule in &config.rules {
            let readings = values.for_rule(rule);
            let seen: BTreeSet<Option<String>> =
                readings.iter().map(|r| r.subject.clone()).collect();
            for reading in readings {
                evaluate(&state, rule, reading, now);
            }
            // Values that had an alert but no reading this round (a tenant whose tokens aged
            // out, a model gone from the windows) have no data: a pending or firing alert
            // clears or resolves, and the idle ones are forgotten.
            for subject in state.alerts.stale(&rule.name, &seen) {
                let reading = Reading {
                    subject,
                    value: None,
                    note: None,
                };
                evaluate(&state, rule, reading, now);
            }
            state.alerts.forget_idle(&rule.name, &seen);
        }
        // Publish the alerts for the other control planes' API.
        match serde_json::to_string(&state.alerts.active(&config.rules)) {
            Ok(json) => {
                if let Err(e) = state.store.put_board(BOARD_ACTIVE, &json, now).await {
                    tracing::warn!(error = %e, "Could not publish the active alerts");
                }
            }
            Err(e) => tracing::warn!(error = %e, "Could not encode the active alerts"),
        }
        // Tell the other control planes what the firing alerts do.
        let effects = state.alerts.effects();
        if told
            .as_ref()
            .is_none_or(|(last, at)| *last != effects || at.elapsed() >= REPEAT_EFFECTS)
        {
            match serde_json::to_string(&effects) {
                Ok(json) => state.cluster.send(crate::cluster::Notice::Effects(json)),
                Err(e) => tracing::warn!(error = %e, "Could not encode the alerts' effects"),
            }
            told = Some((effects, std::time::Instant::now()));
        }
    }
}

impl AlertEngine {
    /// The values of a rule's tracked alerts that are not in `seen`.
    fn stale(&self, rule: &str, seen: &BTreeSet<Option<String>>) -> Vec<Option<String>> {
        let Ok(alerts) = self.alerts.lock() else {
            return Vec::new();
        };
        alerts
            .iter()
            .filter(|((r, v), t)| {
                r == rule && !seen.contains(v) && !matches!(t.state, AlertState::Inactive)
            })
            .map(|((_, v), _)| v.clone())
            .collect()
    }

    /// Drops a rule's inactive alerts whose value had no reading, so the map stays bounded by
    /// the values that have data.
    fn forget_idle(&self, rule: &str, seen: &BTreeSet<Option<String>>) {
        if let Ok(mut alerts) = self.alerts.lock() {
            alerts.retain(|(r, v), t| {
                r != rule || seen.contains(v) || !matches!(t.state, AlertState::Inactive)
            });
        }
    }
}

fn evaluate(state: &AppState, rule: &AlertRule, reading: Reading, now: Timestamp) {
    let Reading {
        subject: value_of,
        value,
        note,
    } = reading;
    let key = (rule.name.clone(), value_of.clone());
    let transition = {
        let Ok(mut alerts) = state.alerts.alerts.lock() else {
            return;
        };
        let tracked = alerts.entry(key).or_insert(Tracked {
            state: AlertState::Inactive,
            value: 0.0,
        });
        if let Some(v) = value {
            tracked.value = v;
        }
        let transition = step(&mut tracked.state, rule, value, now);
        let firing = matches!(tracked.state, AlertState::Firing { .. });
        state
            .metrics
            .alerts
            .get_or_create(&crate::telemetry::metrics::AlertLabels {
                rule: rule.name.clone(),
            })
            .set(i64::from(firing));
        transition.map(|t| (t, tracked.value))
    };
    let Some((transition, value)) = transition else {
        return;
    };
    let scope = scope_text(rule.by, value_of.as_deref());
    let subject = Subject::of(rule.by, value_of.as_deref());
    let event_subject = value_of.as_deref().unwrap_or("*");
    let word = match transition {
        Transition::Pending => "pending",
        Transition::Cleared => "cleared",
        Transition::Firing => "firing",
        Transition::Resolved => "resolved",
    };
    let silenced = state.alerts.silenced_until(rule, value_of.as_deref(), now);
    let muted = silenced.map_or_else(String::new, |until| {
        format!("; silenced until {}", until.format("%Y-%m-%d %H:%M:%S"))
    });
    let note = note.map_or_else(String::new, |n| format!(" ({n})"));
    let message = format!(
        "alert {}{scope} {word}: {} {value:.3}{note} {} {} for {}s ({}){muted}",
        rule.name,
        rule.signal.as_str(),
        rule.comparison.as_str(),
        rule.threshold,
        rule.for_.as_secs(),
        rule.severity.as_str(),
    );
    state
        .events
        .emit(now, EventKind::Alert, event_subject, None, message.clone());
    // A silence mutes actions; the history still records the transition. Emergency mode and
    // imposed rate limits are always undone on resolve, so a silence can never leave them on.
    let ends_emergency = transition == Transition::Resolved;
    if !matches!(transition, Transition::Firing | Transition::Resolved)
        || (silenced.is_some() && !ends_emergency)
    {
        return;
    }
    let notification = notify::Notification {
        rule: rule.name.clone(),
        agent_type: subject.agent_type.clone(),
        model: subject.model.clone(),
        tenant: subject.tenant,
        status: word.to_owned(),
        severity: rule.severity,
        signal: rule.signal.as_str().to_owned(),
        value,
        threshold: rule.threshold,
        comparison: rule.comparison.as_str().to_owned(),
        for_s: rule.for_.as_secs(),
        labels: rule.labels.clone(),
        message,
        at: now,
    };
    for action in &rule.actions {
        // Under a silence only a resolve gets here: it still undoes what firing did.
        if silenced.is_some() && !matches!(action, Action::EmergencyMode | Action::RateLimit) {
            continue;
        }
        match action {
            Action::Notify => notify::send_all(state, &notification),
            Action::ScaleUp if transition == Transition::Firing => {
                if let Some(agent_type) = &subject.agent_type {
                    scale_up(state, &rule.name, agent_type, now);
                }
            }
            Action::ScaleUp => {}
            Action::RateLimit => {
                let alert = format!("{}{scope}", rule.name);
                let firing = transition == Transition::Firing;
                match (rule.by, subject.tenant) {
                    (Dimension::Tenant, Some(tenant)) => {
                        let why = format!("{} {value:.3}", rule.signal.as_str());
                        rate_limit(state, &alert, Some((tenant, why)), firing, now);
                    }
                    (Dimension::Tenant, None) => {}
                    _ => rate_limit(state, &alert, None, firing, now),
                }
            }
            Action::EmergencyMode => {
                let on = transition == Transition::Firing;
                let alert = format!("{}{scope}", rule.name);
                if state.alerts.set_emergency(alert.clone(), on) {
                    let message = if on {
                        format!(
                            "emergency mode on: alert {alert} fired; new tasks of priority below {EMERGENCY_MIN_PRIORITY} are refused"
                        )
                    } else {
                        format!("emergency mode off: alert {alert} resolved")
                    };
                    state
                        .events
                        .emit(now, EventKind::Alert, event_subject, None, message);
                }
            }
        }
    }
}

/// On firing, holds a tenant to `alerting.rate_limit`: the alert's own (with what it measured)
/// on rules by tenant, else the tenant that used the most tokens in the last hour. On resolve,
/// releases whichever tenant this alert limited. Both are events about that tenant.
fn rate_limit(
    state: &AppState,
    alert: &str,
    alerts_tenant: Option<(TenantId, String)>,
    firing: bool,
    now: Timestamp,
) {
    let Ok(mut limited) = state.alerts.limited.lock() else {
        return;
    };
    let (tenant, message) = if firing {
        let (tenant, why) = match alerts_tenant {
            Some(found) => found,
            None => {
                let usage = state.recent.tokens_last_hour_by_tenant();
                let Some((&tenant, &tokens)) = usage.iter().max_by_key(|(_, n)| **n) else {
                    return;
                };
                (
                    tenant,
                    format!("{tokens} tokens in the last hour, the most of any tenant"),
                )
            }
        };
        let rate = state.config.alerting.rate_limit;
        state.limits.impose(tenant, Some(rate));
        limited.insert(alert.to_owned(), tenant);
        (
            tenant,
            format!("tenant {tenant} limited to {rate}: alert {alert} fired ({why})"),
        )
    } else {
        let Some(tenant) = limited.remove(alert) else {
            return;
        };
        // Another firing alert may still hold the same tenant.
        if limited.values().any(|t| *t == tenant) {
            return;
        }
        state.limits.impose(tenant, None);
        (
            tenant,
            format!("tenant {tenant} rate limit restored: alert {alert} resolved"),
        )
    };
    state
        .events
        .emit(now, EventKind::Alert, &tenant.to_string(), None, message);
}

/// One more instance of the pool, within its maximum; for static pools a recommendation.
fn scale_up(state: &AppState, rule: &str, agent_type: &str, now: Timestamp) {
    let Some(pool) = state.config.pools.iter().find(|p| p.name == agent_type) else {
        return;
    };
    let current = state
        .provisioners
        .size(pool)
        .unwrap_or_else(|| state.registry.counts(agent_type).accepting);
    let to = (current + 1).min(pool.max_instances);
    let message = if to == current {
        format!(
            "pool {agent_type} stays at {current}: alert {rule} asked for more, the maximum is reached"
        )
    } else if matches!(pool.provisioner, flotilla_core::config::Provisioner::Static) {
        format!(
            "pool {agent_type} {current} → {to} recommended (static pool): alert {rule} is firing"
        )
    } else {
        format!("pool {agent_type} {current} → {to}: alert {rule} is firing")
    };
    state
        .events
        .emit(now, EventKind::Scale, agent_type, None, message);
    if to > current {
        state.provisioners.scale(pool, to);
    }
}
