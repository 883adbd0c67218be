//! The vault's sealed secrets on SQLite: written through the single writer, read from the
//! readers. A new version applies only if it is exactly one more than the last version at its
//! path, which makes concurrent writers of one path retry instead of overwriting each other.

use super::SqliteStore;
use crate::StoreResult;
use crate::rows::micros;
use crate::secrets::{
    KeyRow, ListRow, SealedRow, SealedSecret, SecretCursor, SecretSummary, WrappedSecretKey,
    oldest_kept, summaries, version_of,
};
use flotilla_core::Timestamp;
use flotilla_core::id::TenantId;

/// The columns of a [`SealedRow`].
macro_rules! sealed_columns {
    () => {
        "tenant_id, path, version, ciphertext, wrapped_key, master_key_id, created_at, created_by"
    };
}

pub(super) async fn insert(store: &SqliteStore, s: &SealedSecret, keep: u32) -> StoreResult<bool> {
    let mut tx = store.write_tx().await?;
    let at = micros(s.created_at);
    let claimed = if s.version == 1 {
        sqlx::query(
            "INSERT INTO secrets (tenant_id, path, last_version, created_at, updated_at) \
             VALUES (?1, ?2, 1, ?3, ?3) ON CONFLICT DO NOTHING",
        )
        .bind(s.tenant_id.0)
        .bind(&s.path)
        .bind(at)
        .execute(&mut *tx)
        .await?
    } else {
        // A deleted secret written again starts a new life (created_at) but keeps counting.
        sqlx::query(
            "UPDATE secrets SET last_version = ?3, updated_at = ?4, \
             created_at = CASE WHEN deleted_at IS NULL THEN created_at ELSE ?4 END, \
             deleted_at = NULL \
             WHERE tenant_id = ?1 AND path = ?2 AND last_version = ?3 - 1",
        )
        .bind(s.tenant_id.0)
        .bind(&s.path)
        .bind(i64::from(s.version))
        .bind(at)
        .execute(&mut *tx)
        .await?
    };
    if claimed.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO secret_versions \
         (tenant_id, path, version, ciphertext, wrapped_key, master_key_id, created_at, created_by) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(s.tenant_id.0)
    .bind(&s.path)
    .bind(i64::from(s.version))
    .bind(&s.ciphertext)
    .bind(&s.wrapped_key)
    .bind(&s.master_key_id)
    .bind(at)
    .bind(s.created_by.as_deref())
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM secret_versions WHERE tenant_id = ?1 AND path = ?2 AND version < ?3")
        .bind(s.tenant_id.0)
        .bind(&s.path)
        .bind(oldest_kept(s.version, keep))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn last_version(
    store: &SqliteStore,
    tenant: TenantId,
    path: &str,
) -> StoreResult<Option<u32>> {
    let last: Option<i64> =
        sqlx::query_scalar("SELECT last_version FROM secrets WHERE tenant_id = ?1 AND path = ?2")
            .bind(tenant.0)
            .bind(path)
            .fetch_optional(&store.reader)
            .await?;
    last.map(version_of).transpose()
}

pub(super) async fn get(
    store: &SqliteStore,
    tenant: TenantId,
    path: &str,
    version: Option<u32>,
) -> StoreResult<Option<SealedSecret>> {
    let row: Option<SealedRow> = match version {
        Some(version) => {
            sqlx::query_as(concat!(
                "SELECT ",
                sealed_columns!(),
                " FROM secret_versions WHERE tenant_id = ?1 AND path = ?2 AND version = ?3"
            ))
            .bind(tenant.0)
            .bind(path)
            .bind(i64::from(version))
            .fetch_optional(&store.reader)
            .await?
        }
        None => {
            sqlx::query_as(concat!(
                "SELECT ",
                sealed_columns!(),
                " FROM secret_versions WHERE tenant_id = ?1 AND path = ?2 \
                 ORDER BY version DESC LIMIT 1"
            ))
            .bind(tenant.0)
            .bind(path)
            .fetch_optional(&store.reader)
            .await?
        }
    };
    row.map(SealedSecret::try_from).transpose()
}

pub(super) async fn list(
    store: &SqliteStore,
    tenant: TenantId,
    prefix: &str,
    limit: u32,
) -> StoreResult<Vec<SecretSummary>> {
    let rows: Vec<ListRow> = sqlx::query_as(
        "SELECT s.path, s.last_version, s.created_at AS secret_created_at, s.updated_at, \
                v.version, v.created_at AS version_created_at \
         FROM secrets s JOIN secret_versions v ON v.tenant_id = s.tenant_id AND v.path = s.path \
         WHERE s.tenant_id = ?1 AND s.path IN ( \
             SELECT path FROM secrets WHERE tenant_id = ?1 AND deleted_at IS NULL \
             AND substr(path, 1, length(?2)) = ?2 ORDER BY path LIMIT ?3) \
         ORDER BY s.path, v.version",
    )
    .bind(tenant.0)
    .bind(prefix)
    .bind(i64::from(limit))
    .fetch_all(&store.reader)
    .await?;
    summaries(rows)
}

pub(super) async fn delete(
    store: &SqliteStore,
    tenant: TenantId,
    path: &str,
    now: Timestamp,
) -> StoreResult<Option<u32>> {
    let mut tx = store.write_tx().await?;
    let marked = sqlx::query(
        "UPDATE secrets SET deleted_at = ?3 \
         WHERE tenant_id = ?1 AND path = ?2 AND deleted_at IS NULL",
    )
    .bind(tenant.0)
    .bind(path)
    .bind(micros(now))
    .execute(&mut *tx)
    .await?;
    if marked.rows_affected() == 0 {
        return Ok(None);
    }
    let deleted = sqlx::query("DELETE FROM secret_versions WHERE tenant_id = ?1 AND path = ?2")
        .bind(tenant.0)
        .bind(path)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(Some(u32::try_from(deleted).unwrap_or(u32::MAX)))
}

pub(super) async fn keys_to_rewrap(
    store: &SqliteStore,
    current: &str,
    after: Option<&SecretCursor>,
    limit: u32,
) -> StoreResult<Vec<WrappedSecretKey>> {
    let rows: Vec<KeyRow> =
        match after {
            Some(c) => sqlx::query_as(
                "SELECT tenant_id, path, version, wrapped_key, master_key_id FROM secret_versions \
                 WHERE master_key_id <> ?1 AND (tenant_id, path, version) > (?2, ?3, ?4) \
                 ORDER BY tenant_id, path, version LIMIT ?5",
            )
            .bind(current)
            .bind(c.tenant_id.0)
            .bind(&c.path)
            .bind(i64::from(c.version))
            .bind(i64::from(limit))
            .fetch_all(&store.reader)
            .await?,
            None => sqlx::query_as(
                "SELECT tenant_id, path, version, wrapped_key, master_key_id FROM secret_versions \
                 WHERE master_key_id <> ?1 ORDER BY tenant_id, path, version LIMIT ?2",
            )
            .bind(current)
            .bind(i64::from(limit))
            .fetch_all(&store.reader)
            .await?,
        };
    rows.into_iter().map(WrappedSecretKey::try_from).collect()
}

pub(super) async fn rewrap(
    store: &SqliteStore,
    old: &WrappedSecretKey,
    wrapped_key: &[u8],
    master_key_id: &str,
) -> StoreResult<bool> {
    let mut tx = store.write_tx().await?;
    let updated = sqlx::query(
        "UPDATE secret_versions SET wrapped_key = ?5, master_key_id = ?6 \
         WHERE tenant_id = ?1 AND path = ?2 AND version = ?3 AND master_key_id = ?4",
    )
    .bind(old.tenant_id.0)
    .bind(&old.path)
    .bind(i64::from(old.version))
    .bind(&old.master_key_id)
    .bind(wrapped_key)
    .bind(master_key_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(updated == 1)
}

pub(super) async fn count_by_master_key(store: &SqliteStore) -> StoreResult<Vec<(String, u64)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT master_key_id, COUNT(*) FROM secret_versions GROUP BY master_key_id ORDER BY 1",
    )
    .fetch_all(&store.reader)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, n)| (id, u64::try_from(n).unwrap_or(0)))
        .collect())
}
