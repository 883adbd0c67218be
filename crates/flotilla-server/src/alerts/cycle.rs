//! One round of the alert engine, on the leader: read the signals, step every alert, record
//! transitions as events, and carry out the rules' actions (docs/design.md §11).

use super::signals::{self, Reading};
use super::{
    AlertEngine, Alerts, BOARD_ACTIVE, EMERGENCY_MIN_PRIORITY, Effects, Emergency, REPEAT_EFFECTS,
    Subject, Tracked, scope_text, stored_silences,
};
use flotilla_core::Timestamp;
use flotilla_core::alert::{Action, AlertRule, AlertState, Dimension, Transition, step};
use flotilla_core::event::EventKind;
use flotilla_core::id::TenantId;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs until `shutdown`.
pub(crate) async fn run(state: Arc<Alerts>, shutdown: CancellationToken) {
    let config = &state.config.alerting;
    if config.rules.is_empty() {
        return;
    }
    // This control plane leads now: what it heard from the previous leader no longer holds.
    state.engine.adopt(
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
        match stored_silences(&state.store, state.clock.now()).await {
            Ok(stored) => state.engine.replace_silences(stored),
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
            for subject in state.engine.stale(&rule.name, &seen) {
                let reading = Reading {
                    subject,
                    value: None,
                    note: None,
                };
                evaluate(&state, rule, reading, now);
            }
            state.engine.forget_idle(&rule.name, &seen);
        }
        // Publish the alerts for the other control planes' API.
        match serde_json::to_string(&state.engine.active(&config.rules)) {
            Ok(json) => {
                if let Err(e) = state.store.put_board(BOARD_ACTIVE, &json, now).await {
                    tracing::warn!(error = %e, "Could not publish the active alerts");
                }
            }
            Err(e) => tracing::warn!(error = %e, "Could not encode the active alerts"),
        }
        // Tell the other control planes what the firing alerts do.
        let effects = state.engine.effects();
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

fn evaluate(state: &Alerts, rule: &AlertRule, reading: Reading, now: Timestamp) {
    let Reading {
        subject: value_of,
        value,
        note,
    } = reading;
    let key = (rule.name.clone(), value_of.clone());
    let transition = {
        let Ok(mut alerts) = state.engine.alerts.lock() else {
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
    let owner = flotilla_core::event::alert_owner(rule.signal, rule.by, subject.tenant);
    let word = match transition {
        Transition::Pending => "pending",
        Transition::Cleared => "cleared",
        Transition::Firing => "firing",
        Transition::Resolved => "resolved",
    };
    let silenced = state.engine.silenced_until(rule, value_of.as_deref(), now);
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
    state.events.emit(
        now,
        EventKind::Alert,
        event_subject,
        None,
        owner,
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
    let notification = crate::notify::Notification {
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
            Action::Notify => crate::notify::send_all(&state.notifications, &notification),
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
                // It sheds what alerted: the agent type, or the tenant; an alert by model or
                // in total sheds everything.
                let emergency = Emergency {
                    alert: alert.clone(),
                    agent_type: subject.agent_type.clone(),
                    tenant: subject.tenant,
                };
                let what = match (&emergency.agent_type, emergency.tenant) {
                    (Some(t), _) => format!(" of agent type {t}"),
                    (None, Some(t)) => format!(" of tenant {t}"),
                    (None, None) => String::new(),
                };
                // Who is refused reads why: the tenant shed, or everyone.
                let readers = emergency.tenant;
                if state.engine.set_emergency(emergency, on) {
                    let message = if on {
                        format!(
                            "emergency mode on: alert {alert} fired; new tasks{what} of priority below {EMERGENCY_MIN_PRIORITY} are refused"
                        )
                    } else {
                        format!("emergency mode off: alert {alert} resolved")
                    };
                    state
                        .events
                        .emit(now, EventKind::Alert, event_subject, None, readers, message);
                }
            }
        }
    }
}

/// On firing, holds a tenant to `alerting.rate_limit`: the alert's own (with what it measured)
/// on rules by tenant, else the tenant that used the most tokens in the last hour. On resolve,
/// releases whichever tenant this alert limited. Both are events about that tenant.
fn rate_limit(
    state: &Alerts,
    alert: &str,
    alerts_tenant: Option<(TenantId, String)>,
    firing: bool,
    now: Timestamp,
) {
    let Ok(mut limited) = state.engine.limited.lock() else {
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
    state.events.emit(
        now,
        EventKind::Alert,
        &tenant.to_string(),
        None,
        Some(tenant),
        message,
    );
}

/// One more instance of the pool, within its maximum; for static pools a recommendation.
fn scale_up(state: &Alerts, rule: &str, agent_type: &str, now: Timestamp) {
    let Some(pool) = state.config.pool(agent_type) else {
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
        .emit(now, EventKind::Scale, agent_type, None, None, message);
    if to > current {
        state.provisioners.scale(pool, to);
    }
}
