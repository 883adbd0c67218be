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
