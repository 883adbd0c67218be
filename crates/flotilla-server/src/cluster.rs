//! What control planes on one PostgreSQL database tell each other (docs/design.md §9): a task was
//! queued (wake that type's dispatcher, so a claim need not wait for the next poll), a task
//! ended (answer the long-polls parked on it, wherever they are, and refuse its attempt's
//! model-gateway token without waiting for the cached answer to lapse), the fleet changed
//! (reload the registry). Over `NOTIFY`/`LISTEN`; every replica also reloads the registry from the store
//! every second and its dispatchers poll, so a lost notification delays work, never loses it.
//! On SQLite one control plane runs and nothing is sent.
//!
//! This module is the sending side and the wire format; what a control plane does with what the
//! others tell it is `replicas`.
//!
//! A notification is one line of words: `queued <sender> <agent type>…`, `done <sender> <task
//! id>…` or `agents <sender>`. A control plane ignores its own.

use flotilla_core::id::{TaskId, TenantId};
use flotilla_store::DynStore;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A payload stays well under PostgreSQL's 8000-byte limit.
const MAX_PAYLOAD: usize = 7000;

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
pub(crate) fn channel(
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
