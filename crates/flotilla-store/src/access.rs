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
    mac_key: Option<String>,
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
            mac_key: self.mac_key,
        })
    }
}

/// Whether a database error is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// The columns of an [`crate::rows::ApiKeyRow`].
macro_rules! key_columns {
    () => {
        "id, tenant_id, role, name, secret_hash, created_at, expires_at, revoked_at, rate_limit"
    };
}

pub(crate) const ENSURE_TENANT: &str =
    "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING";
pub(crate) const INSERT_KEY: &str = concat!(
    "INSERT INTO api_keys (",
    key_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
);
pub(crate) const KEY: &str = concat!("SELECT ", key_columns!(), " FROM api_keys WHERE id = $1");
pub(crate) const COUNT_KEYS: &str = "SELECT COUNT(*) FROM api_keys";
pub(crate) const CREATE_TENANT: &str =
    "INSERT INTO tenants (id, name, created_at, rate_limit) VALUES ($1, $2, $3, $4)";
pub(crate) const TENANT: &str =
    "SELECT id, name, created_at, rate_limit FROM tenants WHERE id = $1";
pub(crate) const TENANTS: &str =
    "SELECT id, name, created_at, rate_limit FROM tenants ORDER BY name";
pub(crate) const UPDATE_TENANT: &str = "UPDATE tenants SET name = COALESCE($2, name), \
     rate_limit = CASE WHEN $3 THEN $4 ELSE rate_limit END \
     WHERE id = $1 RETURNING id, name, created_at, rate_limit";
pub(crate) const KEYS: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM api_keys WHERE ($1 IS NULL OR tenant_id = $1) ORDER BY created_at, id"
);
pub(crate) const REVOKE_KEY: &str = concat!(
    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) \
     WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2) RETURNING ",
    key_columns!()
);
pub(crate) const AUDIT_HEAD: &str = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1";
pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit \
     (seq, at, actor, tenant_id, action, target, outcome, source, prev_hash, hash, mac_key) ";
pub(crate) const AUDIT_COLUMNS: &str = "SELECT seq, at, actor, tenant_id, action, target, outcome, source, \
     prev_hash, hash, mac_key FROM audit";
pub(crate) const AUDIT: &str = "SELECT seq, at, actor, tenant_id, action, target, outcome, source, \
     prev_hash, hash, mac_key FROM audit WHERE seq > ";

/// [`crate::AccessStore`] for a backend `$store` of database `$db`, written once (see
/// `crate::sql`). Appends to the audit chain run after the backend's `lock_audit`, which
/// serialises them (SQLite's single writer does already): each entry reads the head it links to
/// in the transaction that inserts it.
macro_rules! access_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl crate::AccessStore for $store {
            async fn ensure_tenant(
                &self,
                id: flotilla_core::id::TenantId,
                name: &str,
                now: flotilla_core::Timestamp,
            ) -> crate::StoreResult<()> {
                let mut w = self.writer().await?;
                sqlx::query(crate::access::ENSURE_TENANT)
                    .bind(id.0)
                    .bind(name)
                    .bind(crate::rows::micros(now))
                    .execute(w.conn())
                    .await?;
                w.commit().await
            }

            async fn insert_api_key(
                &self,
                key: &flotilla_core::auth::ApiKeyRecord,
            ) -> crate::StoreResult<()> {
                use crate::rows::{micros, micros_opt};
                let mut w = self.writer().await?;
                sqlx::query(crate::access::INSERT_KEY)
                    .bind(&key.id)
                    .bind(key.tenant_id.0)
                    .bind(key.role.as_str())
                    .bind(&key.name)
                    .bind(&key.secret_hash)
                    .bind(micros(key.created_at))
                    .bind(micros_opt(key.expires_at))
                    .bind(micros_opt(key.revoked_at))
                    .bind(key.rate_limit.map(|r| r.to_string()))
                    .execute(w.conn())
                    .await?;
                w.commit().await
            }

            async fn get_api_key(
                &self,
                id: &str,
            ) -> crate::StoreResult<Option<flotilla_core::auth::ApiKeyRecord>> {
                sqlx::query_as::<_, crate::rows::ApiKeyRow>(crate::access::KEY)
                    .bind(id)
                    .fetch_optional(self.reads())
                    .await?
                    .map(crate::rows::ApiKeyRow::into_record)
                    .transpose()
            }

            async fn count_api_keys(&self) -> crate::StoreResult<u64> {
                let n: i64 = sqlx::query_scalar(crate::access::COUNT_KEYS)
                    .fetch_one(self.reads())
                    .await?;
                crate::rows::count("api key count", n)
            }

            async fn create_tenant(
                &self,
                tenant: &flotilla_core::tenant::Tenant,
            ) -> crate::StoreResult<bool> {
                let mut tx = self.begin().await?;
                let inserted = sqlx::query(crate::access::CREATE_TENANT)
                    .bind(tenant.id.0)
                    .bind(&tenant.name)
                    .bind(crate::rows::micros(tenant.created_at))
                    .bind(tenant.rate_limit.map(|r| r.to_string()))
                    .execute(&mut *tx)
                    .await;
                match inserted {
                    Ok(_) => {
                        tx.commit().await?;
                        Ok(true)
                    }
                    Err(e) if crate::access::is_unique_violation(&e) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }

            async fn get_tenant(
                &self,
                id: flotilla_core::id::TenantId,
            ) -> crate::StoreResult<Option<flotilla_core::tenant::Tenant>> {
                sqlx::query_as::<_, crate::access::TenantRow>(crate::access::TENANT)
                    .bind(id.0)
                    .fetch_optional(self.reads())
                    .await?
                    .map(crate::access::TenantRow::into_tenant)
                    .transpose()
            }

            async fn list_tenants(&self) -> crate::StoreResult<Vec<flotilla_core::tenant::Tenant>> {
                sqlx::query_as::<_, crate::access::TenantRow>(crate::access::TENANTS)
                    .fetch_all(self.reads())
                    .await?
                    .into_iter()
                    .map(crate::access::TenantRow::into_tenant)
                    .collect()
            }

            async fn update_tenant(
                &self,
                id: flotilla_core::id::TenantId,
                name: Option<&str>,
                rate_limit: Option<Option<flotilla_core::rate::Rate>>,
            ) -> crate::StoreResult<Option<flotilla_core::tenant::Tenant>> {
                let mut tx = self.begin().await?;
                let updated =
                    sqlx::query_as::<_, crate::access::TenantRow>(crate::access::UPDATE_TENANT)
                        .bind(id.0)
                        .bind(name)
                        .bind(rate_limit.is_some())
                        .bind(rate_limit.flatten().map(|r| r.to_string()))
                        .fetch_optional(&mut *tx)
                        .await;
                match updated {
                    Ok(row) => {
                        tx.commit().await?;
                        row.map(crate::access::TenantRow::into_tenant).transpose()
                    }
                    Err(e) if crate::access::is_unique_violation(&e) => {
                        Err(crate::StoreError::Conflict(
                            "another tenant already has this name".to_owned(),
                        ))
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn list_api_keys(
                &self,
                tenant: Option<flotilla_core::id::TenantId>,
            ) -> crate::StoreResult<Vec<flotilla_core::auth::ApiKeyRecord>> {
                sqlx::query_as::<_, crate::rows::ApiKeyRow>(crate::access::KEYS)
                    .bind(tenant.map(|t| t.0))
                    .fetch_all(self.reads())
                    .await?
                    .into_iter()
                    .map(crate::rows::ApiKeyRow::into_record)
                    .collect()
            }

            async fn revoke_api_key(
                &self,
                tenant: Option<flotilla_core::id::TenantId>,
                id: &str,
                now: flotilla_core::Timestamp,
            ) -> crate::StoreResult<Option<flotilla_core::auth::ApiKeyRecord>> {
                let mut tx = self.begin().await?;
                let row = sqlx::query_as::<_, crate::rows::ApiKeyRow>(crate::access::REVOKE_KEY)
                    .bind(id)
                    .bind(tenant.map(|t| t.0))
                    .bind(crate::rows::micros(now))
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.commit().await?;
                row.map(crate::rows::ApiKeyRow::into_record).transpose()
            }

            async fn append_audit(
                &self,
                entries: &[flotilla_core::audit::NewAuditEntry],
                key: &flotilla_core::audit::MacKey,
            ) -> crate::StoreResult<Vec<flotilla_core::audit::AuditEntry>> {
                if entries.is_empty() {
                    return Ok(Vec::new());
                }
                let mut tx = self.begin().await?;
                Self::lock_audit(&mut tx).await?;
                let head: Option<(i64, String)> = sqlx::query_as(crate::access::AUDIT_HEAD)
                    .fetch_optional(&mut *tx)
                    .await?;
                let chained = crate::access::chain(entries, head, key)?;
                for chunk in chained.chunks(256) {
                    let mut insert = crate::access::insert_audit::<$db>(chunk);
                    insert.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(chained)
            }

            async fn audit_head(
                &self,
            ) -> crate::StoreResult<Option<flotilla_core::audit::AuditEntry>> {
                let query = format!("{} ORDER BY seq DESC LIMIT 1", crate::access::AUDIT_COLUMNS);
                sqlx::query_as::<_, crate::access::AuditRow>(&query)
                    .fetch_optional(self.reads())
                    .await?
                    .map(crate::access::AuditRow::into_entry)
                    .transpose()
            }

            async fn audit_legacy_through(&self) -> crate::StoreResult<i64> {
                let through: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(through_seq) FROM audit_legacy")
                        .fetch_one(self.reads())
                        .await?;
                Ok(through.unwrap_or(0))
            }

            async fn last_audit_before(
                &self,
                before: flotilla_core::Timestamp,
            ) -> crate::StoreResult<Option<flotilla_core::audit::AuditEntry>> {
                let mut query = sqlx::QueryBuilder::<$db>::new(crate::access::AUDIT_COLUMNS);
                query
                    .push(" WHERE at < ")
                    .push_bind(crate::rows::micros(before))
                    .push(" ORDER BY seq DESC LIMIT 1");
                query
                    .build_query_as::<crate::access::AuditRow>()
                    .fetch_optional(self.reads())
                    .await?
                    .map(crate::access::AuditRow::into_entry)
                    .transpose()
            }

            async fn prune_audit(
                &self,
                through: i64,
                record: &flotilla_core::audit::NewAuditEntry,
                key: &flotilla_core::audit::MacKey,
            ) -> crate::StoreResult<u64> {
                let mut tx = self.begin().await?;
                Self::lock_audit(&mut tx).await?;
                let head: Option<(i64, String)> = sqlx::query_as(crate::access::AUDIT_HEAD)
                    .fetch_optional(&mut *tx)
                    .await?;
                // The record of the prune goes in first, in the same transaction: the entries
                // left always verify from the first of them.
                let chained = crate::access::chain(std::slice::from_ref(record), head, key)?;
                let mut insert = crate::access::insert_audit::<$db>(&chained);
                insert.build().execute(&mut *tx).await?;
                let mut delete = sqlx::QueryBuilder::<$db>::new("DELETE FROM audit WHERE seq <= ");
                delete.push_bind(through);
                let deleted = delete.build().execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                Ok(deleted)
            }

            async fn list_audit(
                &self,
                filter: &crate::AuditFilter,
            ) -> crate::StoreResult<Vec<flotilla_core::audit::AuditEntry>> {
                let mut query = sqlx::QueryBuilder::<$db>::new(crate::access::AUDIT);
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
                    .build_query_as::<crate::access::AuditRow>()
                    .fetch_all(self.reads())
                    .await?
                    .into_iter()
                    .map(crate::access::AuditRow::into_entry)
                    .collect()
            }
        }
    };
}
pub(crate) use access_store;

/// The insert of chained entries (a batch of at most a few hundred).
pub(crate) fn insert_audit<'a, DB>(entries: &'a [AuditEntry]) -> sqlx::QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<Uuid>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut query = sqlx::QueryBuilder::<DB>::new(INSERT_AUDIT);
    query.push_values(entries, |mut row, e| {
        row.push_bind(e.seq)
            .push_bind(crate::rows::micros(e.at))
            .push_bind(e.actor.as_deref())
            .push_bind(e.tenant_id.map(|t| t.0))
            .push_bind(e.action.as_str())
            .push_bind(e.target.as_str())
            .push_bind(e.outcome.as_str())
            .push_bind(e.source.as_deref())
            .push_bind(e.prev_hash.as_str())
            .push_bind(e.hash.as_str())
            .push_bind(e.mac_key.as_deref());
    });
    query
}

/// Chains `entries` after the head `(seq, hash)` (none: the genesis), as they will read back: the
/// store keeps microseconds.
pub(crate) fn chain(
    entries: &[flotilla_core::audit::NewAuditEntry],
    head: Option<(i64, String)>,
    key: &flotilla_core::audit::MacKey,
) -> StoreResult<Vec<AuditEntry>> {
    let (mut seq, mut prev) = head.unwrap_or((0, flotilla_core::audit::GENESIS.to_owned()));
    let mut chained = Vec::with_capacity(entries.len());
    for entry in entries {
        seq += 1;
        let entry = flotilla_core::audit::NewAuditEntry {
            at: crate::rows::truncate(entry.at)?,
            ..entry.clone()
        }
        .chain(seq, &prev, key);
        prev.clone_from(&entry.hash);
        chained.push(entry);
    }
    Ok(chained)
}
