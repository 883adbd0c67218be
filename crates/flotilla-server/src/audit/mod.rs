//! The tamper-evident audit log: administrative changes, secret reads, key creation and
//! revocation, and authentication failures (aggregated per source and minute, `failures`), each
//! appended with who, what, on what, with which outcome and from where. Entries are MAC-chained
//! in the store under a key derived from the master key (`flotilla_core::audit`), so `flotilla
//! audit verify` finds the first altered or removed row, and write access to the database is not
//! enough to re-chain a rewritten history. Retention prunes old entries behind a recorded prune.

pub(crate) mod failures;

use flotilla_core::Timestamp;
use flotilla_core::audit::{AuditEntry, Broken, MacKey, NewAuditEntry, PRUNE, REANCHOR, Start};
use flotilla_core::id::TenantId;
use flotilla_store::AuditFilter;
use std::net::IpAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How an audited action ended, stored as its snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum AuditOutcome {
    Success,
    /// Refused: wrong credentials (`auth.failure`).
    Denied,
}

/// One action to append to the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AuditEvent {
    /// Dotted name of the action, e.g. `key.create`, `secret.read`, `auth.failure`.
    pub action: &'static str,
    /// What it acted on, e.g. a key id, a secret path and version, a tenant id.
    pub target: String,
    pub outcome: AuditOutcome,
    /// The public id of the acting key; `None` when nobody could be identified.
    pub actor: Option<String>,
    pub tenant_id: Option<TenantId>,
    pub source: Option<IpAddr>,
}

/// Why an entry could not be appended (the action must then fail).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] flotilla_store::StoreError),
    /// The store appended nothing.
    #[error("the audit log returned no entry")]
    NoEntry,
}

/// The audit log's writer, shared through `AppState::audit`.
pub(crate) struct Audit {
    store: flotilla_store::DynStore,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
    /// MACs new entries (the current master key's).
    key: MacKey,
    /// Failed authentications waiting to be counted into one entry.
    failures: std::sync::Mutex<failures::Failures>,
    /// Every configured master key's audit key, the current one first, to verify with.
    keys: Vec<MacKey>,
}

/// What `GET /v1/audit/verify` found.
#[derive(Debug)]
pub(crate) struct Verified {
    pub checked: usize,
    /// The newest entry, as `SEQ:HASH` — an anchor to record.
    pub head: Option<String>,
    pub broken: Option<Broken>,
}

impl Audit {
    /// A writer that MACs with `key` (the current master key's) and verifies with any of `keys`
    /// (every configured master key's).
    pub(crate) fn new(
        store: flotilla_store::DynStore,
        clock: std::sync::Arc<dyn crate::clock::Clock>,
        key: MacKey,
        keys: Vec<MacKey>,
    ) -> Self {
        Audit {
            store,
            clock,
            key,
            keys,
            failures: std::sync::Mutex::default(),
        }
    }

    /// When the newest entry predates MACs (a log written by an older version), appends the
    /// entry that starts MAC chaining after it, once, and says so in the log. Only entries that
    /// existed when the schema began MACs are re-anchored: a plain-hashed head beyond them is a
    /// rewritten log, left for `audit verify` to report.
    pub(crate) async fn reanchor_if_needed(&self) -> Result<(), AuditError> {
        let Some(head) = self.store.audit_head().await? else {
            return Ok(());
        };
        if head.mac_key.is_some() {
            return Ok(());
        }
        if head.seq > self.store.audit_legacy_through().await? {
            tracing::error!(
                head = head.seq,
                "The audit log ends with plain-hashed entries written after it began to be MAC'd: it was rewritten; not re-anchoring it (flotilla audit verify reports where)"
            );
            return Ok(());
        }
        let entry = NewAuditEntry {
            at: self.clock.now(),
            actor: None,
            tenant_id: None,
            action: REANCHOR.to_owned(),
            target: format!(
                "entries 1..{} are chained with plain SHA-256; MACs under master key {} from here on",
                head.seq, self.key.id
            ),
            outcome: <&str>::from(AuditOutcome::Success).to_owned(),
            source: None,
        };
        self.store
            .append_audit(std::slice::from_ref(&entry), &self.key)
            .await?;
        tracing::warn!(
            through = head.seq,
            master_key_id = %self.key.id,
            "Re-anchored the audit log: its entries so far carry plain hashes, MACs start now"
        );
        Ok(())
    }

    /// Records a failed authentication, aggregated per source and minute ([`failures`]).
    pub(crate) async fn failed_auth(
        &self,
        source: Option<IpAddr>,
        actor: Option<String>,
        target: &str,
    ) {
        let now = self.clock.now();
        let events = self.lock_failures().note(source, actor, target, now);
        for event in events {
            if let Err(e) = self.record(event).await {
                tracing::warn!(error = %e, "Could not audit a failed authentication");
            }
        }
    }

    /// Writes the counts of failed authentications whose minute is over.
    pub(crate) async fn flush_failures(&self) {
        let events = self.lock_failures().due(self.clock.now());
        for event in events {
            if let Err(e) = self.record(event).await {
                tracing::warn!(error = %e, "Could not audit failed authentications");
            }
        }
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, failures::Failures> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks the whole log (from `start`) with every configured master key's audit key.
    pub(crate) async fn verify(&self, start: &Start) -> Result<Verified, AuditError> {
        let mut entries = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_audit(&AuditFilter {
                    after,
                    tenant_id: None,
                    action: None,
                    limit: 1_000,
                })
                .await?;
            let full = page.len() == 1_000;
            after = page.last().map(|e| e.seq).or(after);
            entries.extend(page);
            if !full {
                break;
            }
        }
        let keys = |id: &str| self.keys.iter().find(|k| k.id == id).cloned();
        let result = flotilla_core::audit::verify(&entries, start, &keys);
        Ok(Verified {
            checked: *result.as_ref().unwrap_or(&0),
            head: entries.last().map(|e| format!("{}:{}", e.seq, e.hash)),
            broken: result.err(),
        })
    }

    /// Deletes the entries written before `before`, behind an `audit.prune` entry that names the
    /// last one deleted, so the rest still verifies. Returns how many were deleted.
    pub(crate) async fn prune_before(&self, before: Timestamp) -> Result<u64, AuditError> {
        let Some(last) = self.store.last_audit_before(before).await? else {
            return Ok(0);
        };
        let record = NewAuditEntry {
            at: self.clock.now(),
            actor: None,
            tenant_id: None,
            action: PRUNE.to_owned(),
            target: format!("{}:{}", last.seq, last.hash),
            outcome: <&str>::from(AuditOutcome::Success).to_owned(),
            source: None,
        };
        let deleted = self.store.prune_audit(last.seq, &record, &self.key).await?;
        tracing::info!(through = last.seq, deleted, "Pruned the audit log");
        Ok(deleted)
    }

    /// Appends one entry and returns once it is durable. An action whose audit entry cannot be
    /// written fails rather than goes unrecorded (the caller propagates the error).
    pub(crate) async fn record(&self, event: AuditEvent) -> Result<AuditEntry, AuditError> {
        let entry = NewAuditEntry {
            at: self.clock.now(),
            actor: event.actor,
            tenant_id: event.tenant_id,
            action: event.action.to_owned(),
            target: event.target,
            outcome: <&str>::from(event.outcome).to_owned(),
            source: event.source.map(|s| s.to_string()),
        };
        tracing::info!(
            action = %entry.action,
            target = %entry.target,
            outcome = %entry.outcome,
            actor = entry.actor.as_deref().unwrap_or("-"),
            "Audit"
        );
        let mut chained = self
            .store
            .append_audit(std::slice::from_ref(&entry), &self.key)
            .await?;
        chained.pop().ok_or(AuditError::NoEntry)
    }
}

/// The retention loop (`[audit] retention_s`), run by the leader: every `interval`, prunes the
/// entries older than `retention`.
pub(crate) async fn retention(
    audit: std::sync::Arc<Audit>,
    retention: Duration,
    interval: Duration,
    term: CancellationToken,
) {
    loop {
        let cutoff = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|r| audit.clock.now().checked_sub_signed(r));
        if let Some(cutoff) = cutoff
            && let Err(e) = audit.prune_before(cutoff).await
        {
            tracing::warn!(error = %e, "Could not prune the audit log");
        }
        tokio::select! {
            () = term.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Writes the counts of failed authentications every 10 s, until `stop`.
pub(crate) async fn flush_failures(audit: std::sync::Arc<Audit>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                audit.flush_failures().await;
                return;
            }
            () = tokio::time::sleep(Duration::from_secs(10)) => audit.flush_failures().await,
        }
    }
}
