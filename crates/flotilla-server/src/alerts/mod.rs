//! The alert engine (DESIGN.md §11): every `[alerting] interval_ms` it reads the built-in signals,
//! advances each (rule, agent type) alert with `flotilla_core::alert::step`, records every
//! transition as an `alert` fleet event (the history), and carries out the rule's actions when
//! an alert fires: `notify` (the configured webhooks, retried), `scale_up` (one more instance
//! of the affected pool), `emergency_mode` (shed low-priority work) and `rate_limit` (hold the
//! heaviest tenant to a tighter rate); the last two are undone when the alert resolves.

pub mod notify;
mod signals;

use crate::app::AppState;
use flotilla_core::Timestamp;
use flotilla_core::alert::{Action, AlertRule, AlertState, Transition, step};
use flotilla_core::event::EventKind;
use flotilla_core::id::TenantId;
pub use flotilla_core::wire::{ActiveAlert, AlertList, Silence};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

type Key = (String, Option<String>);

struct Tracked {
    state: AlertState,
    value: f64,
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
}

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

    /// Removes a silence and returns it; `None` when there is none with this id.
    pub fn unsilence(&self, id: uuid::Uuid) -> Option<Silence> {
        let mut silences = self.silences.lock().ok()?;
        let i = silences.iter().position(|s| s.id == id)?;
        Some(silences.remove(i))
    }

    /// Until when an alert's actions are muted, if they are.
    fn silenced_until(
        &self,
        rule: &str,
        agent_type: Option<&str>,
        now: Timestamp,
    ) -> Option<Timestamp> {
        self.silences(now)
            .into_iter()
            .filter(|s| {
                s.rule == rule && (s.agent_type.is_none() || s.agent_type.as_deref() == agent_type)
            })
            .map(|s| s.until)
            .max()
    }

    /// Why new low-priority work is refused now, if it is.
    pub fn emergency(&self) -> Option<String> {
        let emergencies = self.emergencies.lock().ok()?;
        let (alert, _) = emergencies.iter().next()?;
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

    /// Pending and firing alerts, firing first, then by rule and type.
    pub fn active(&self, rules: &[AlertRule]) -> Vec<ActiveAlert> {
        let Ok(alerts) = self.alerts.lock() else {
            return Vec::new();
        };
        let mut out: Vec<ActiveAlert> = alerts
            .iter()
            .filter_map(|((name, agent_type), t)| {
                let rule = rules.iter().find(|r| &r.name == name)?;
                let (state, since) = match t.state {
                    AlertState::Inactive => return None,
                    AlertState::Pending { since } => ("pending", since),
                    AlertState::Firing { since, .. } => ("firing", since),
                };
                Some(ActiveAlert {
                    rule: name.clone(),
                    agent_type: agent_type.clone(),
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
            (b.state == "firing", &a.rule, &a.agent_type).cmp(&(
                a.state == "firing",
                &b.rule,
                &b.agent_type,
            ))
        });
        out
    }
}

/// Runs until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let config = &state.config.alerting;
    if config.rules.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let values = signals::read(&state).await;
        let now = state.clock.now();
        for rule in &config.rules {
            for (agent_type, value) in values.for_rule(rule) {
                evaluate(&state, rule, agent_type, value, now);
            }
        }
    }
}

fn evaluate(
    state: &AppState,
    rule: &AlertRule,
    agent_type: Option<String>,
    value: Option<f64>,
    now: Timestamp,
) {
    let key = (rule.name.clone(), agent_type.clone());
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
    let scope = agent_type
        .as_deref()
        .map_or_else(String::new, |t| format!(" [{t}]"));
    let word = match transition {
        Transition::Pending => "pending",
        Transition::Cleared => "cleared",
        Transition::Firing => "firing",
        Transition::Resolved => "resolved",
    };
    let silenced = state
        .alerts
        .silenced_until(&rule.name, agent_type.as_deref(), now);
    let muted = silenced.map_or_else(String::new, |until| {
        format!("; silenced until {}", until.format("%Y-%m-%d %H:%M:%S"))
    });
    let message = format!(
        "alert {}{scope} {word}: {} {value:.3} {} {} for {}s ({}){muted}",
        rule.name,
        rule.signal.as_str(),
        rule.comparison.as_str(),
        rule.threshold,
        rule.for_.as_secs(),
        rule.severity.as_str(),
    );
    state.events.emit(
        now,
        EventKind::Alert,
        agent_type.as_deref().unwrap_or("*"),
        None,
        message.clone(),
    );
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
        agent_type: agent_type.clone(),
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
                if let Some(agent_type) = &agent_type {
                    scale_up(state, &rule.name, agent_type, now);
                }
            }
            Action::ScaleUp => {}
            Action::RateLimit => {
                let alert = format!("{}{scope}", rule.name);
                rate_limit(state, &alert, transition == Transition::Firing, now);
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
                    state.events.emit(
                        now,
                        EventKind::Alert,
                        agent_type.as_deref().unwrap_or("*"),
                        None,
                        message,
                    );
                }
            }
        }
    }
}

/// On firing, holds the tenant that used the most tokens in the last hour to
/// `alerting.rate_limit`; on resolve, releases whichever tenant this alert limited. Both are
/// events.
fn rate_limit(state: &AppState, alert: &str, firing: bool, now: Timestamp) {
    let Ok(mut limited) = state.alerts.limited.lock() else {
        return;
    };
    let message = if firing {
        let usage = state.recent.tokens_last_hour_by_tenant();
        let Some((&tenant, &tokens)) = usage.iter().max_by_key(|(_, n)| **n) else {
            return;
        };
        let rate = state.config.alerting.rate_limit;
        state.limits.impose(tenant, Some(rate));
        limited.insert(alert.to_owned(), tenant);
        format!(
            "tenant {tenant} limited to {rate}: alert {alert} fired ({tokens} tokens in the last hour, the most of any tenant)"
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
        format!("tenant {tenant} rate limit restored: alert {alert} resolved")
    };
    state.events.emit(now, EventKind::Alert, "*", None, message);
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
        state.provisioners.scale(state, pool, to);
    }
}
