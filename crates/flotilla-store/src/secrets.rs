//! What the store keeps of the vault's secrets: sealed versions (ciphertext and wrapped data key,
//! never plaintext) and the summaries of listings. Sealing and opening happen in the server's
//! vault; the store only persists bytes.

use crate::rows::from_micros;
use crate::{StoreError, StoreResult};
use flotilla_core::Timestamp;
use flotilla_core::id::TenantId;
use std::fmt;
use uuid::Uuid;

/// One sealed version of a secret, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub tenant_id: TenantId,
    pub path: String,
    /// 1 for the first version at this path, then one more each write (deleted versions
    /// included: numbers are never reused).
    pub version: u32,
    /// Nonce and AEAD ciphertext of the value.
    pub ciphertext: Vec<u8>,
    /// Nonce and AEAD ciphertext of the version's data key, sealed by a master key.
    pub wrapped_key: Vec<u8>,
    /// Id of the master key that wrapped the data key.
    pub master_key_id: String,
    pub created_at: Timestamp,
    /// Key id of the writer, when known.
    pub created_by: Option<String>,
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedSecret")
            .field("tenant_id", &self.tenant_id)
            .field("path", &self.path)
            .field("version", &self.version)
            .field("ciphertext_len", &self.ciphertext.len())
            .field("master_key_id", &self.master_key_id)
            .field("created_at", &self.created_at)
            .field("created_by", &self.created_by)
            .finish_non_exhaustive()
    }
}

/// A data key to re-wrap, with where it belongs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedSecretKey {
    pub tenant_id: TenantId,
    pub path: String,
    pub version: u32,
    pub wrapped_key: Vec<u8>,
    pub master_key_id: String,
}

impl WrappedSecretKey {
    /// The position of this key in the order of [`crate::Store::secret_keys_to_rewrap`].
    pub fn cursor(&self) -> SecretCursor {
        SecretCursor {
            tenant_id: self.tenant_id,
            path: self.path.clone(),
            version: self.version,
        }
    }
}

/// A position in the order (tenant, path, version) of all secret versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretCursor {
    pub tenant_id: TenantId,
    pub path: String,
    pub version: u32,
}

/// A live secret in a listing: path, kept versions and times, never a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSummary {
    pub path: String,
    /// The newest version written.
    pub latest_version: u32,
    /// Kept versions and their times, oldest first.
    pub versions: Vec<(u32, Timestamp)>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A row of `secret_versions`.
#[derive(sqlx::FromRow)]
pub(crate) struct SealedRow {
    tenant_id: Uuid,
    path: String,
    version: i64,
    ciphertext: Vec<u8>,
    wrapped_key: Vec<u8>,
    master_key_id: String,
    created_at: i64,
    created_by: Option<String>,
}

pub(crate) fn version_of(v: i64) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("secret version {v} out of range")))
}

impl TryFrom<SealedRow> for SealedSecret {
    type Error = StoreError;
    fn try_from(r: SealedRow) -> StoreResult<Self> {
        Ok(SealedSecret {
            tenant_id: TenantId(r.tenant_id),
            path: r.path,
            version: version_of(r.version)?,
            ciphertext: r.ciphertext,
            wrapped_key: r.wrapped_key,
            master_key_id: r.master_key_id,
            created_at: from_micros(r.created_at)?,
            created_by: r.created_by,
        })
    }
}

/// A row of `secret_versions` without the value.
#[derive(sqlx::FromRow)]
pub(crate) struct KeyRow {
    tenant_id: Uuid,
    path: String,
    version: i64,
    wrapped_key: Vec<u8>,
    master_key_id: String,
}

impl TryFrom<KeyRow> for WrappedSecretKey {
    type Error = StoreError;
    fn try_from(r: KeyRow) -> StoreResult<Self> {
        Ok(WrappedSecretKey {
            tenant_id: TenantId(r.tenant_id),
            path: r.path,
            version: version_of(r.version)?,
            wrapped_key: r.wrapped_key,
            master_key_id: r.master_key_id,
        })
    }
}

/// A row of a listing: one version of one secret, ordered by path then version.
#[derive(sqlx::FromRow)]
pub(crate) struct ListRow {
    path: String,
    last_version: i64,
    secret_created_at: i64,
    updated_at: i64,
    version: i64,
    version_created_at: i64,
}

/// Groups listing rows (ordered by path, then version) into summaries.
pub(crate) fn summaries(rows: Vec<ListRow>) -> StoreResult<Vec<SecretSummary>> {
    let mut out: Vec<SecretSummary> = Vec::new();
    for row in rows {
        let version = (
            version_of(row.version)?,
            from_micros(row.version_created_at)?,
        );
        match out.last_mut() {
            Some(last) if last.path == row.path => last.versions.push(version),
            _ => out.push(SecretSummary {
                path: row.path,
                latest_version: version_of(row.last_version)?,
                versions: vec![version],
                created_at: from_micros(row.secret_created_at)?,
                updated_at: from_micros(row.updated_at)?,
            }),
        }
    }
    Ok(out)
}

/// The first version to keep when `keep` versions up to `latest` are kept.
pub(crate) fn oldest_kept(latest: u32, keep: u32) -> i64 {
    i64::from(latest) - i64::from(keep.max(1)) + 1
}

/// The columns of a [`SealedRow`].
macro_rules! sealed_columns {
    () => {
        "tenant_id, path, version, ciphertext, wrapped_key, master_key_id, created_at, created_by"
    };
}

/// Claims version 1 of a new path.
pub(crate) const CLAIM_FIRST: &str = "INSERT INTO secrets (tenant_id, path, last_version, created_at, updated_at) \
     VALUES ($1, $2, 1, $3, $3) ON CONFLICT DO NOTHING";
/// Claims the next version of a path; a deleted secret written again starts a new life
/// (created_at) but keeps counting.
pub(crate) const CLAIM_NEXT: &str = "UPDATE secrets SET last_version = $3, updated_at = $4, \
     created_at = CASE WHEN deleted_at IS NULL THEN created_at ELSE $4 END, deleted_at = NULL \
     WHERE tenant_id = $1 AND path = $2 AND last_version = $3 - 1";
pub(crate) const INSERT_VERSION: &str = "INSERT INTO secret_versions \
     (tenant_id, path, version, ciphertext, wrapped_key, master_key_id, created_at, created_by) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub(crate) const FORGET_OLD: &str =
    "DELETE FROM secret_versions WHERE tenant_id = $1 AND path = $2 AND version < $3";
pub(crate) const LAST_VERSION: &str =
    "SELECT last_version FROM secrets WHERE tenant_id = $1 AND path = $2";
pub(crate) const VERSION: &str = concat!(
    "SELECT ",
    sealed_columns!(),
    " FROM secret_versions WHERE tenant_id = $1 AND path = $2 AND version = $3"
);
pub(crate) const LATEST: &str = concat!(
    "SELECT ",
    sealed_columns!(),
    " FROM secret_versions WHERE tenant_id = $1 AND path = $2 ORDER BY version DESC LIMIT 1"
);
pub(crate) const LIST: &str = "SELECT s.path, s.last_version, s.created_at AS secret_created_at, s.updated_at, \
            v.version, v.created_at AS version_created_at \
     FROM secrets s JOIN secret_versions v ON v.tenant_id = s.tenant_id AND v.path = s.path \
     WHERE s.tenant_id = $1 AND s.path IN ( \
         SELECT path FROM secrets WHERE tenant_id = $1 AND deleted_at IS NULL \
         AND substr(path, 1, length($2)) = $2 ORDER BY path LIMIT $3) \
     ORDER BY s.path, v.version";
pub(crate) const MARK_DELETED: &str = "UPDATE secrets SET deleted_at = $3 \
     WHERE tenant_id = $1 AND path = $2 AND deleted_at IS NULL";
pub(crate) const DELETE_VERSIONS: &str =
    "DELETE FROM secret_versions WHERE tenant_id = $1 AND path = $2";
pub(crate) const KEYS_AFTER: &str = "SELECT tenant_id, path, version, wrapped_key, master_key_id \
     FROM secret_versions WHERE master_key_id <> $1 AND (tenant_id, path, version) > ($2, $3, $4) \
     ORDER BY tenant_id, path, version LIMIT $5";
pub(crate) const KEYS_FIRST: &str = "SELECT tenant_id, path, version, wrapped_key, master_key_id \
     FROM secret_versions WHERE master_key_id <> $1 ORDER BY tenant_id, path, version LIMIT $2";
pub(crate) const REWRAP: &str = "UPDATE secret_versions SET wrapped_key = $5, master_key_id = $6 \
     WHERE tenant_id = $1 AND path = $2 AND version = $3 AND master_key_id = $4";
pub(crate) const BY_MASTER_KEY: &str =
    "SELECT master_key_id, COUNT(*) FROM secret_versions GROUP BY master_key_id ORDER BY 1";

/// [`crate::SecretStore`] for a backend, written once (see `crate::sql`). A new version applies
/// only if it is exactly one more than the last version at its path, which makes concurrent
/// writers of one path retry instead of overwriting each other.
macro_rules! secret_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl crate::SecretStore for $store {
            async fn insert_secret_version(
                &self,
                s: &crate::SealedSecret,
                keep: u32,
            ) -> crate::StoreResult<bool> {
                use crate::secrets::*;
                let mut tx = self.begin().await?;
                let at = crate::rows::micros(s.created_at);
                let claimed = if s.version == 1 {
                    sqlx::query(CLAIM_FIRST)
                        .bind(s.tenant_id.0)
                        .bind(&s.path)
                        .bind(at)
                } else {
                    sqlx::query(CLAIM_NEXT)
                        .bind(s.tenant_id.0)
                        .bind(&s.path)
                        .bind(i64::from(s.version))
                        .bind(at)
                };
                if claimed.execute(&mut *tx).await?.rows_affected() != 1 {
                    return Ok(false);
                }
                sqlx::query(INSERT_VERSION)
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
                sqlx::query(FORGET_OLD)
                    .bind(s.tenant_id.0)
                    .bind(&s.path)
                    .bind(oldest_kept(s.version, keep))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn last_secret_version(
                &self,
                tenant: flotilla_core::id::TenantId,
                path: &str,
            ) -> crate::StoreResult<Option<u32>> {
                let last: Option<i64> = sqlx::query_scalar(crate::secrets::LAST_VERSION)
                    .bind(tenant.0)
                    .bind(path)
                    .fetch_optional(self.reads())
                    .await?;
                last.map(crate::secrets::version_of).transpose()
            }

            async fn get_secret_version(
                &self,
                tenant: flotilla_core::id::TenantId,
                path: &str,
                version: Option<u32>,
            ) -> crate::StoreResult<Option<crate::SealedSecret>> {
                use crate::secrets::*;
                let query = match version {
                    Some(v) => sqlx::query_as(VERSION)
                        .bind(tenant.0)
                        .bind(path)
                        .bind(i64::from(v)),
                    None => sqlx::query_as(LATEST).bind(tenant.0).bind(path),
                };
                let row: Option<SealedRow> = query.fetch_optional(self.reads()).await?;
                row.map(SealedSecret::try_from).transpose()
            }

            async fn list_secrets(
                &self,
                tenant: flotilla_core::id::TenantId,
                prefix: &str,
                limit: u32,
            ) -> crate::StoreResult<Vec<crate::SecretSummary>> {
                let rows: Vec<crate::secrets::ListRow> = sqlx::query_as(crate::secrets::LIST)
                    .bind(tenant.0)
                    .bind(prefix)
                    .bind(i64::from(limit))
                    .fetch_all(self.reads())
                    .await?;
                crate::secrets::summaries(rows)
            }

            async fn delete_secret(
                &self,
                tenant: flotilla_core::id::TenantId,
                path: &str,
                now: flotilla_core::Timestamp,
            ) -> crate::StoreResult<Option<u32>> {
                use crate::secrets::*;
                let mut tx = self.begin().await?;
                let marked = sqlx::query(MARK_DELETED)
                    .bind(tenant.0)
                    .bind(path)
                    .bind(crate::rows::micros(now))
                    .execute(&mut *tx)
                    .await?;
                if marked.rows_affected() == 0 {
                    return Ok(None);
                }
                let deleted = sqlx::query(DELETE_VERSIONS)
                    .bind(tenant.0)
                    .bind(path)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(Some(u32::try_from(deleted).unwrap_or(u32::MAX)))
            }

            async fn secret_keys_to_rewrap(
                &self,
                current: &str,
                after: Option<&crate::SecretCursor>,
                limit: u32,
            ) -> crate::StoreResult<Vec<crate::WrappedSecretKey>> {
                use crate::secrets::*;
                let query = match after {
                    Some(c) => sqlx::query_as(KEYS_AFTER)
                        .bind(current)
                        .bind(c.tenant_id.0)
                        .bind(&c.path)
                        .bind(i64::from(c.version)),
                    None => sqlx::query_as(KEYS_FIRST).bind(current),
                };
                let rows: Vec<KeyRow> =
                    query.bind(i64::from(limit)).fetch_all(self.reads()).await?;
                rows.into_iter().map(WrappedSecretKey::try_from).collect()
            }

            async fn rewrap_secret_key(
                &self,
                old: &crate::WrappedSecretKey,
                wrapped_key: &[u8],
                master_key_id: &str,
            ) -> crate::StoreResult<bool> {
                let mut tx = self.begin().await?;
                let updated = sqlx::query(crate::secrets::REWRAP)
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

            async fn secret_versions_by_master_key(
                &self,
            ) -> crate::StoreResult<Vec<(String, u64)>> {
                let rows: Vec<(String, i64)> = sqlx::query_as(crate::secrets::BY_MASTER_KEY)
                    .fetch_all(self.reads())
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, n)| (id, u64::try_from(n).unwrap_or(0)))
                    .collect())
            }
        }
    };
}
pub(crate) use secret_store;
