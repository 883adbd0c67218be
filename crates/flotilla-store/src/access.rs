//! Tenants, keys and the audit log as both backends read them.

use crate::rows::from_micros;
use crate::{StoreError, StoreResult};
use flotilla_core::audit::AuditEntry;
use flotilla_core::id::TenantId;
use flotilla_core::rate::Rate;
use flotilla_core::tenant::Tenant;
use uuid::Uuid;

/// A stored rate limit read back.
pub(crate) fn rate(text: Option<&str>, owner: &str) -> StoreResult<Option<Rate>> {
    text.map(|t| {
        t.parse::<Rate>()
            .map_err(|e| StoreError::Corrupt(format!("{owner}: {e}")))
    })
    .transpose()
}

#[derive(sqlx::FromRow)]
pub(crate) struct TenantRow {
    id: Uuid,
    name: String,
    created_at: i64,
    rate_limit: Option<String>,
}

impl TenantRow {
    pub(crate) fn into_tenant(self) -> StoreResult<Tenant> {
        Ok(Tenant {
            rate_limit: rate(self.rate_limit.as_deref(), &format!("tenant {}", self.id))?,
            id: TenantId(self.id),
            name: self.name,
            created_at: from_micros(self.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    seq: i64,
    at: i64,
    actor: Option<String>,
    tenant_id: Option<Uuid>,
    action: String,
    target: String,
    outcome: String,
    source: Option<String>,
    prev_hash: String,
    hash: String,
}

impl AuditRow {
    pub(crate) fn into_entry(self) -> StoreResult<AuditEntry> {
        Ok(AuditEntry {
            seq: self.seq,
            at: from_micros(self.at)?,
            actor: self.actor,
            tenant_id: self.tenant_id.map(TenantId),
            action: self.action,
            target: self.target,
            outcome: self.outcome,
            source: self.source,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

/// Whether a database error is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}
