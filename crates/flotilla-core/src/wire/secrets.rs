//! Wire types of `/v1/secrets` and `/v1/vault`. Types that carry a secret value redact it in
//! `Debug`; listings carry paths, versions and times only.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `PUT /v1/secrets/{path}`: write a new version.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    /// The value (UTF-8 text, at least 1 and at most `vault.max_value_bytes` bytes).
    #[schema(min_length = 1)]
    pub value: String,
}

impl fmt::Debug for PutSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutSecret")
            .field("value", &"<redacted>")
            .finish()
    }
}

/// `POST /v1/secrets/{path}/rotate`: write a new version with a supplied or generated value.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RotateSecret {
    /// The new value; absent: a random one is generated (URL-safe base64 of `bytes` random
    /// bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    pub value: Option<String>,
    /// Random bytes in a generated value (16-1024, default 32).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 16, maximum = 1024)]
    pub bytes: Option<u32>,
    /// Answer with the generated value (default false: only the new version is returned).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reveal: bool,
}

impl fmt::Debug for RotateSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateSecret")
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("bytes", &self.bytes)
            .field("reveal", &self.reveal)
            .finish()
    }
}

/// A version just written (`PUT` and `rotate`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretWritten {
    pub path: String,
    pub version: u32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The generated value, only when a rotation was asked to reveal it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl fmt::Debug for SecretWritten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretWritten")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("created_at", &self.created_at)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `GET /v1/secrets/{path}`: one version's value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretValue {
    pub path: String,
    pub version: u32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub value: String,
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretValue")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("created_at", &self.created_at)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// One kept version of a secret (no value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretVersionInfo {
    pub version: u32,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A secret in a listing: its path and kept versions, never a value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretInfo {
    pub path: String,
    /// The newest version.
    pub latest_version: u32,
    /// Kept versions, oldest first.
    pub versions: Vec<SecretVersionInfo>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When the newest version was written.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /v1/secrets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretInfo>,
}

/// `DELETE /v1/secrets/{path}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretDeleted {
    pub path: String,
    /// Versions removed.
    pub versions: u32,
}

/// `POST /v1/vault/rewrap`: every data key re-wrapped with the current master key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RewrapReport {
    /// Id (fingerprint) of the current master key.
    pub master_key_id: String,
    /// Data keys re-wrapped by this call.
    pub rewrapped: u64,
    /// Data keys still wrapped by a master key that is not configured (they cannot be read).
    pub unreadable: u64,
}
