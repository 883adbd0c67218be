//! What control planes on one PostgreSQL database tell each other (docs/design.md §9): a task was
//! queued (wake that type's dispatcher, so a claim need not wait for the next poll), a task
//! ended (answer the long-polls parked on it, wherever they are, and refuse its attempt's
//! model-gateway token without waiting for the cached answer to lapse), the fleet changed
//! (reload the registry). Over `NOTIFY`/`LISTEN`; every replica also reloads the registry from the store
//! every second and its dispatchers poll, so a lost notification delays work, never loses it.
//! On SQLite one control plane runs and nothing is sent.
//!
//! A notification is one line of words: `queued <sender> <agent type>…`, `done <sender> <task
//! id>…` or `agents <sender>`. A control plane ignores its own.

use crate::app::AppState;
use flotilla_core::id::{TaskId, TenantId};
use flotilla_store::DynStore;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A payload stays well under PostgreSQL's 8000-byte limit.
const MAX_PAYLOAD: usize = 7000;

/// How often every replica reloads the fleet from the store.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// What happened here that other control planes should know.
#[derive(Debug)]
pub enum Notice {
    Queued(String),
    Done(TaskId),
    Agents,
    /// A key was revoked: drop it from the key caches.
    KeyRevoked(String),
    /// A tenant's settings changed: read its rate again.
    TenantChanged(TenantId),
    /// The leader's alerts' effects ([`crate::alerts::Effects`] as JSON).
    Effects(String),
    /// Tokens counted on a follower, for the leader's alert windows
    /// ([`crate::telemetry::recent::TokenDelta`] as JSON).
    Tokens(String),
}

/// Sends notices to the other control planes, in batches, off the hot path.
#[derive(Clone)]
pub struct Notifier {
    tx: Option<mpsc::UnboundedSender<Notice>>,
}

impl Notifier {
    /// A notifier that sends nothing (SQLite, tests).
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    /// True when there can be other control planes to tell (PostgreSQL).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Tells the other control planes (when there can be any).
    pub fn send(&self, notice: Notice) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(notice);
        }
    }
}

/// The notifier and its sender loop, which runs until `stop` (on PostgreSQL; on SQLite the
/// notifier is disabled and the loop ends at once).
pub fn channel(
    store: DynStore,
    owner: Arc<str>,
    stop: CancellationToken,
) -> (Notifier, impl Future<Output = ()>) {
    let enabled = store.topology().is_shared();
    let (tx, mut rx) = mpsc::unbounded_channel::<Notice>();
    let sender = async move {
        if !enabled {
            return;
        }
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, 4096) => if n == 0 { return },
                () = stop.cancelled() => return,
            }
            for payload in payloads(&owner, batch.drain(..)) {
                if let Err(e) = store.notify(&payload).await {
                    tracing::debug!(error = %e, "Could not notify the other control planes");
                }
            }
        }
    };
    (
        Notifier {
            tx: enabled.then_some(tx),
        },
        sender,
    )
}

/// Coalesces notices into as few payloads as fit.
fn payloads(owner: &str, notices: impl Iterator<Item = Notice>) -> Vec<String> {
    let mut queued = BTreeSet::new();
    let mut done = Vec::new();
    let mut agents = false;
    let mut keys = Vec::new();
    let mut tenants = BTreeSet::new();
    let mut effects = None;
    let mut tokens = Vec::new();
    for notice in notices {
        match notice {
            Notice::Queued(agent_type) => {
                queued.insert(agent_type);
            }
            Notice::Done(id) => done.push(id.to_string()),
            Notice::Agents => agents = true,
            Notice::KeyRevoked(id) => keys.push(id),
            Notice::TenantChanged(id) => {
                tenants.insert(id.to_string());
            }
            // Only the latest counts.
            Notice::Effects(json) => effects = Some(json),
            Notice::Tokens(json) => tokens.push(json),
        }
    }
    let mut out = Vec::new();
    let mut words = |kind: &str, items: Vec<String>| {
        let mut line = format!("{kind} {owner}");
        for item in items {
            if line.len() + 1 + item.len() > MAX_PAYLOAD {
                out.push(std::mem::replace(&mut line, format!("{kind} {owner}")));
            }
            line.push(' ');
            line.push_str(&item);
        }
        out.push(line);
    };
    if !queued.is_empty() {
        words("queued", queued.into_iter().collect());
    }
    if !done.is_empty() {
        words("done", done);
    }
    if agents {
        words("agents", Vec::new());
    }
    if !keys.is_empty() {
        words("keys", keys);
    }
    if !tenants.is_empty() {
        words("tenants", tenants.into_iter().collect());
    }
    if let Some(json) = effects.filter(|j| j.len() < MAX_PAYLOAD - 100) {
        out.push(format!("effects {owner} {json}"));
    }
    for json in tokens.into_iter().filter(|j| j.len() < MAX_PAYLOAD - 100) {
        out.push(format!("tokens {owner} {json}"));
    }
    out
}

/// Listens to the other control planes until `shutdown`, and reloads the fleet every second.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    if !state.store.topology().is_shared() {
        return;
    }
    state.recent.keep_outbox();
    let (resync_tx, resync) = tokio::sync::watch::channel(());
    let syncing = tokio::spawn(sync_fleet(state.clone(), resync, shutdown.clone()));
    let mut listener = None;
    loop {
        let Some(active) = listener.as_mut() else {
            match state.store.listen().await {
                Ok(l) => listener = l,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot listen to the other control planes; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            continue;
        };
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = active.recv() => received,
        };
        match received {
            Ok(Some(payload)) => handle(&state, &payload, &resync_tx),
            Ok(None) => {
                // The connection dropped: what was sent meanwhile is gone. Look again at
                // everything a notification could have been about.
                tracing::info!("Lost the notification connection; catching up");
                catch_up(&state, &resync_tx);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen to the other control planes; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    let _ = syncing.await;
}

fn handle(state: &AppState, payload: &str, resync: &tokio::sync::watch::Sender<()>) {
    let mut words = payload.split(' ');
    let (Some(kind), Some(sender)) = (words.next(), words.next()) else {
        return;
    };
    if sender == &*state.owner {
        return;
    }
    match kind {
        "keys" => {
            for id in words {
                state.keys.forget(id);
            }
        }
        "tenants" => {
            for id in words.filter_map(|w| w.parse::<uuid::Uuid>().ok()) {
                state.limits.tenant_changed(TenantId(id));
            }
        }
        "tokens" if state.leadership.is_leader() => {
            let json = payload.splitn(3, ' ').nth(2).unwrap_or_default();
            match serde_json::from_str(json) {
                Ok(delta) => state.recent.absorb(&delta),
                Err(e) => tracing::warn!(error = %e, "Unreadable token counts ignored"),
            }
        }
        "tokens" => {}
        "effects" => {
            let json = payload.splitn(3, ' ').nth(2).unwrap_or_default();
            match serde_json::from_str(json) {
                Ok(effects) => {
                    state
                        .alerts
                        .adopt(effects, &state.limits, state.config.alerting.rate_limit)
                }
                Err(e) => tracing::warn!(error = %e, "Unreadable alert effects ignored"),
            }
        }
        "queued" => {
            for agent_type in words {
                state.dispatchers.ensure(state, agent_type);
                state.wakers.task_queued_here(agent_type);
            }
        }
        "done" => {
            for id in words.filter_map(|w| w.parse::<uuid::Uuid>().ok()) {
                state.attempts.task_done(TaskId(id));
                state.waiters.wake_here(TaskId(id));
            }
        }
        "agents" => resync.send_replace(()),
        other => tracing::debug!(kind = other, "Unknown notification ignored"),
    }
}

/// After a lost connection: every dispatcher looks at the queue, every long-poll re-reads its
/// task, the fleet is reloaded.
fn catch_up(state: &AppState, resync: &tokio::sync::watch::Sender<()>) {
    for agent_type in state.registry.types() {
        state.wakers.task_queued_here(&agent_type);
    }
    state.waiters.wake_all();
    resync.send_replace(());
}

/// Reloads the fleet from the store every second and when told to.
async fn sync_fleet(
    state: AppState,
    mut resync: tokio::sync::watch::Receiver<()>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SYNC_EVERY) => {}
            changed = resync.changed() => if changed.is_err() { return },
        }
        forward_tokens(&state);
        match state.store.list_agents().await {
            Ok(agents) => {
                let now = state.clock.now();
                for agent_type in state.registry.sync(agents, now) {
                    state.dispatchers.ensure(&state, &agent_type);
                }
            }
            Err(e) => tracing::debug!(error = %e, "Could not reload the fleet"),
        }
    }
}

/// Tells the leader what was counted here (a leader keeps its own).
fn forward_tokens(state: &AppState) {
    let delta = state.recent.take_outbox();
    if delta.is_empty() || state.leadership.is_leader() {
        return;
    }
    // About 100 entries keep a payload under the limit (a tenant entry is about 50 bytes).
    for chunk in delta.chunks(100) {
        match serde_json::to_string(&chunk) {
            Ok(json) => state.cluster.send(Notice::Tokens(json)),
            Err(e) => tracing::warn!(error = %e, "Could not encode token counts"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_coalesce_and_split_under_the_payload_limit() {
        let ids: Vec<TaskId> = (0..400).map(|_| TaskId(uuid::Uuid::now_v7())).collect();
        let notices = [
            Notice::Queued("b".into()),
            Notice::Agents,
            Notice::Queued("a".into()),
            Notice::Queued("b".into()),
        ]
        .into_iter()
        .chain(ids.iter().map(|id| Notice::Done(*id)));
        let out = payloads("me", notices);
        assert_eq!(out[0], "queued me a b");
        assert_eq!(out.last().map(String::as_str), Some("agents me"));
        let done: Vec<&str> = out[1..out.len() - 1]
            .iter()
            .inspect(|p| assert!(p.len() <= MAX_PAYLOAD && p.starts_with("done me ")))
            .flat_map(|p| p.split(' ').skip(2))
            .collect();
        assert_eq!(done.len(), 400, "every id once");
        assert!(out.len() > 3, "400 ids need more than one payload");
    }
}
