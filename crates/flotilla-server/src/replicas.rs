//! What this control plane does with what the others on the same PostgreSQL database tell it
//! (docs/design.md §9): the receiving side of `cluster`, which wires notices into the services —
//! wake dispatchers, answer long-polls, end attempts' tokens, forget revoked keys, re-read a
//! tenant's rate, adopt the leader's alert effects, absorb followers' token counts — and reloads
//! the fleet every second. On SQLite it does nothing.

use crate::app::AppState;
use crate::cluster::Notice;
use flotilla_core::id::{TaskId, TenantId};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often every replica reloads the fleet from the store.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Listens to the other control planes until `shutdown`, and reloads the fleet every second.
pub(crate) async fn run(state: AppState, shutdown: CancellationToken) {
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
                state.scheduler.ensure(agent_type);
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
                    state.scheduler.ensure(&agent_type);
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
