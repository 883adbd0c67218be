//! The tamper-evident audit log: administrative changes, secret reads, key creation and
//! revocation, and authentication failures, each appended with who, what, on what, with which
//! outcome and from where. Entries are hash-chained in the store, so `flotilla audit verify`
//! finds the first altered or removed row.

use flotilla_core::audit::{AuditEntry, NewAuditEntry};
use flotilla_core::id::TenantId;
use std::net::IpAddr;

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
}

impl Audit {
    pub(crate) fn new(
        store: flotilla_store::DynStore,
        clock: std::sync::Arc<dyn crate::clock::Clock>,
    ) -> Self {
        Audit { store, clock }
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
            .append_audit(std::slice::from_ref(&entry))
            .await?;
        chained.pop().ok_or(AuditError::NoEntry)
    }
}
