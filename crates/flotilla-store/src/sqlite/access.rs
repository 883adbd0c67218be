//! Tenants, keys and the audit log on SQLite. The audit chain is extended in the single writer's
//! transaction, which serialises appends: each entry reads the head it links to in the same
//! transaction that inserts it.

use super::SqliteStore;
use crate::access::{AuditRow, TenantRow, is_unique_violation};
use crate::rows::{ApiKeyRow, micros, truncate};
use crate::{AuditFilter, StoreError, StoreResult};
use flotilla_core::Timestamp;
use flotilla_core::audit::{AuditEntry, GENESIS, NewAuditEntry};
use flotilla_core::auth::ApiKeyRecord;
use flotilla_core::id::TenantId;
use flotilla_core::rate::Rate;
use flotilla_core::tenant::Tenant;
use sqlx::{QueryBuilder, Sqlite};

pub(super) async fn create_tenant(store: &SqliteStore, tenant: &Tenant) -> StoreResult<bool> {
    let mut tx = store.write_tx().await?;
    let inserted = sqlx::query(
        "INSERT INTO tenants (id, name, created_at, rate_limit) VALUES (?1, ?2, ?3, ?4)",
    )
    .bind(tenant.id.0)
    .bind(&tenant.name)
    .bind(micros(tenant.created_at))
    .bind(tenant.rate_limit.map(|r| r.to_string()))
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {
            tx.commit().await?;
            Ok(true)
        }
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn get_tenant(store: &SqliteStore, id: TenantId) -> StoreResult<Option<Tenant>> {
    sqlx::query_as::<_, TenantRow>(
        "SELECT id, name, created_at, rate_limit FROM tenants WHERE id = ?1",
    )
    .bind(id.0)
    .fetch_optional(&store.reader)
    .await?
    .map(TenantRow::into_tenant)
    .transpose()
}

pub(super) async fn list_tenants(store: &SqliteStore) -> StoreResult<Vec<Tenant>> {
    sqlx::query_as::<_, TenantRow>(
        "SELECT id, name, created_at, rate_limit FROM tenants ORDER BY name",
    )
    .fetch_all(&store.reader)
    .await?
    .into_iter()
    .map(TenantRow::into_tenant)
    .collect()
}

pub(super) async fn update_tenant(
    store: &SqliteStore,
    id: TenantId,
    name: Option<&str>,
    rate_limit: Option<Option<Rate>>,
) -> StoreResult<Option<Tenant>> {
    let mut tx = store.write_tx().await?;
    let updated = sqlx::query_as::<_, TenantRow>(
        "UPDATE tenants SET name = COALESCE(?2, name), \
         rate_limit = CASE WHEN ?3 THEN ?4 ELSE rate_limit END \
         WHERE id = ?1 RETURNING id, name, created_at, rate_limit",
    )
    .bind(id.0)
    .bind(name)
    .bind(rate_limit.is_some())
    .bind(rate_limit.flatten().map(|r| r.to_string()))
    .fetch_optional(&mut *tx)
    .await;
    match updated {
        Ok(row) => {
            tx.commit().await?;
            row.map(TenantRow::into_tenant).transpose()
        }
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(
            "another tenant already has this name".to_owned(),
        )),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn list_keys(
    store: &SqliteStore,
    tenant: Option<TenantId>,
) -> StoreResult<Vec<ApiKeyRecord>> {
    sqlx::query_as::<_, ApiKeyRow>(
        "SELECT id, tenant_id, role, name, secret_hash, created_at, expires_at, revoked_at, rate_limit \
         FROM api_keys WHERE (?1 IS NULL OR tenant_id = ?1) ORDER BY created_at, id",
    )
    .bind(tenant.map(|t| t.0))
    .fetch_all(&store.reader)
    .await?
    .into_iter()
    .map(ApiKeyRow::into_record)
    .collect()
}

pub(super) async fn revoke_key(
    store: &SqliteStore,
    tenant: Option<TenantId>,
    id: &str,
    now: Timestamp,
) -> StoreResult<Option<ApiKeyRecord>> {
    let mut tx = store.write_tx().await?;
    let row = sqlx::query_as::<_, ApiKeyRow>(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?3) \
         WHERE id = ?1 AND (?2 IS NULL OR tenant_id = ?2) \
         RETURNING id, tenant_id, role, name, secret_hash, created_at, expires_at, revoked_at, rate_limit",
    )
    .bind(id)
    .bind(tenant.map(|t| t.0))
    .bind(micros(now))
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    row.map(ApiKeyRow::into_record).transpose()
}

pub(super) async fn append_audit(
    store: &SqliteStore,
    entries: &[NewAuditEntry],
) -> StoreResult<Vec<AuditEntry>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = store.write_tx().await?;
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let (mut seq, mut prev) = head.unwrap_or((0, GENESIS.to_owned()));
    let mut chained = Vec::with_capacity(entries.len());
    for entry in entries {
        seq += 1;
        // Chained as it will read back: the store keeps microseconds.
        let entry = NewAuditEntry {
            at: truncate(entry.at)?,
            ..entry.clone()
        }
        .chain(seq, &prev);
        prev.clone_from(&entry.hash);
        chained.push(entry);
    }
    for chunk in chained.chunks(256) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO audit (seq, at, actor, tenant_id, action, target, outcome, source, prev_hash, hash) ",
        );
        query.push_values(chunk, |mut row, e| {
            row.push_bind(e.seq)
                .push_bind(micros(e.at))
                .push_bind(e.actor.as_deref())
                .push_bind(e.tenant_id.map(|t| t.0))
                .push_bind(e.action.as_str())
                .push_bind(e.target.as_str())
                .push_bind(e.outcome.as_str())
                .push_bind(e.source.as_deref())
                .push_bind(e.prev_hash.as_str())
                .push_bind(e.hash.as_str());
        });
        query.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(chained)
}

pub(super) async fn list_audit(
    store: &SqliteStore,
    filter: &AuditFilter,
) -> StoreResult<Vec<AuditEntry>> {
    let mut query = QueryBuilder::<Sqlite>::new(
        "SELECT seq, at, actor, tenant_id, action, target, outcome, source, prev_hash, hash \
         FROM audit WHERE seq > ",
    );
    query.push_bind(filter.after.unwrap_or(0));
    if let Some(tenant) = filter.tenant_id {
        query.push(" AND tenant_id = ").push_bind(tenant.0);
    }
    if let Some(action) = &filter.action {
        query.push(" AND action = ").push_bind(action.as_str());
    }
    query
        .push(" ORDER BY seq LIMIT ")
        .push_bind(i64::from(filter.limit));
    query
        .build_query_as::<AuditRow>()
        .fetch_all(&store.reader)
        .await?
        .into_iter()
        .map(AuditRow::into_entry)
        .collect()
}
