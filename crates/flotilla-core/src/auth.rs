//! API keys and roles.
//!
//! A key reads `flt_<public id>_<secret>`: the public id finds the stored record, the secret is
//! checked against its stored hash. Only the hash is ever stored.

use crate::Timestamp;
use crate::id::TenantId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a key may do (the full permission table comes with the security issue).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Operator,
    Submitter,
    Agent,
    Viewer,
}

impl Role {
    /// The snake_case name used on the wire and in the store.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Submitter => "submitter",
            Role::Agent => "agent",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("unknown role `{0}`; expected admin, operator, submitter, agent or viewer")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Role::Admin,
            Role::Operator,
            Role::Submitter,
            Role::Agent,
            Role::Viewer,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// A stored API key: everything but the secret, of which only a hash is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The public part of the key, also its primary key.
    pub id: String,
    pub tenant_id: TenantId,
    pub role: Role,
    pub name: String,
    /// SHA-256 of the secret part, hex.
    pub secret_hash: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// The two parts of a presented key.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub public_id: &'a str,
    pub secret: &'a str,
}

impl fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey")
            .field("public_id", &self.public_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Splits `flt_<public id>_<secret>`; `None` when the text is not of that form.
pub fn parse_key(text: &str) -> Option<PresentedKey<'_>> {
    let rest = text.strip_prefix("flt_")?;
    let (public_id, secret) = rest.split_once('_')?;
    let well_formed = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    (well_formed(public_id) && well_formed(secret)).then_some(PresentedKey { public_id, secret })
}

/// Formats a key from its parts.
pub fn format_key(public_id: &str, secret: &str) -> String {
    format!("flt_{public_id}_{secret}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_into_their_parts() {
        let key = format_key("abc123", "s3cr3t");
        let parsed = parse_key(&key);
        assert_eq!(parsed.as_ref().map(|k| k.public_id), Some("abc123"));
        assert_eq!(parsed.map(|k| k.secret), Some("s3cr3t"));
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for text in [
            "",
            "flt_",
            "flt_abc",
            "flt__secret",
            "flt_abc_",
            "key_abc_def",
            "flt_a-b_c",
            "flt_a_b_c",
        ] {
            assert!(parse_key(text).is_none(), "{text}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let parsed = parse_key("flt_abc_topsecret");
        assert!(!format!("{parsed:?}").contains("topsecret"));
    }
}
