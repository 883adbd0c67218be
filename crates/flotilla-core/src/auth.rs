//! API keys and roles.
//!
//! A key reads `flt_<public id>_<secret>`: the public id finds the stored record, the secret is
//! checked against its stored hash. Only the hash is ever stored.

use crate::Timestamp;
use crate::id::TenantId;
use crate::rate::Rate;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a key may do: see [`Role::allows`] for the permission table.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
#[strum(
    serialize_all = "snake_case",
    parse_err_ty = UnknownRole,
    parse_err_fn = UnknownRole::from_name
)]
pub enum Role {
    Admin,
    Operator,
    Submitter,
    Agent,
    Viewer,
}

impl Role {
    /// The snake_case name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A role name that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("unknown role `{0}`; expected admin, operator, submitter, agent or viewer")]
pub struct UnknownRole(pub String);

impl UnknownRole {
    fn from_name(name: &str) -> Self {
        UnknownRole(name.to_owned())
    }
}

/// Something a route does on behalf of a caller. Each route checks exactly one.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::Display,
)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Permission {
    /// Submit tasks (`POST /v1/tasks`).
    SubmitTasks,
    /// Read tasks and wait for them.
    ReadTasks,
    /// Cancel tasks.
    CancelTasks,
    /// Register agent instances, send heartbeats, deregister.
    RegisterAgents,
    /// Read the fleet: agents, pools and fleet events.
    ReadFleet,
    /// Read alerts and their history.
    ReadAlerts,
    /// Create and remove silences.
    SilenceAlerts,
    /// Read the caller's tenant and its keys.
    ReadKeys,
    /// Create and revoke keys of the caller's tenant (never with a role above the caller's).
    ManageKeys,
    /// Create, rename and change tenants; list every tenant.
    ManageTenants,
    /// List secret paths and versions (never values).
    ListSecrets,
    /// Read secret values.
    ReadSecrets,
    /// Write, rotate and delete secrets.
    WriteSecrets,
    /// Read and export the audit log.
    ReadAudit,
    /// Call models through the model gateway.
    CallModels,
}

impl Permission {
    /// Every permission, in the order of the documented table.
    pub const ALL: [Permission; 15] = [
        Permission::SubmitTasks,
        Permission::ReadTasks,
        Permission::CancelTasks,
        Permission::RegisterAgents,
        Permission::ReadFleet,
        Permission::ReadAlerts,
        Permission::SilenceAlerts,
        Permission::ReadKeys,
        Permission::ManageKeys,
        Permission::ManageTenants,
        Permission::ListSecrets,
        Permission::ReadSecrets,
        Permission::WriteSecrets,
        Permission::ReadAudit,
        Permission::CallModels,
    ];

    /// The snake_case name used in docs and errors.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl Role {
    /// Every role, from the most to the least powerful.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Submitter,
        Role::Agent,
        Role::Viewer,
    ];

    /// The permission table (docs/security.md shows it; a test keeps the two equal).
    ///
    /// `admin` is the platform administrator: everything, and the only role that may act on
    /// another tenant (explicitly, with `?tenant=`). `operator` runs a tenant's work and the
    /// fleet; `submitter` submits and follows tasks; `agent` is what agent processes hold;
    /// `viewer` reads.
    pub const fn allows(self, permission: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Admin => true,
            Role::Operator => !matches!(permission, P::ManageTenants | P::ReadAudit),
            Role::Submitter => matches!(
                permission,
                P::SubmitTasks | P::ReadTasks | P::CancelTasks | P::ReadFleet | P::CallModels
            ),
            Role::Agent => matches!(permission, P::RegisterAgents | P::CallModels),
            Role::Viewer => matches!(
                permission,
                P::ReadTasks | P::ReadFleet | P::ReadAlerts | P::ReadKeys | P::ListSecrets
            ),
        }
    }

    /// Whether a key with this role may create a key with `other`: never a more powerful one.
    pub fn may_grant(self, other: Role) -> bool {
        self.allows(Permission::ManageKeys) && (self == Role::Admin || other != Role::Admin)
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
    /// Requests per second or minute with this key; `None`: the configured default.
    pub rate_limit: Option<Rate>,
}

impl ApiKeyRecord {
    /// What the API shows of a key: everything but the hash.
    pub fn view(&self) -> KeyView {
        KeyView {
            id: self.id.clone(),
            tenant_id: self.tenant_id,
            role: self.role,
            name: self.name.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            rate_limit: self.rate_limit,
        }
    }
}

/// A key as the API shows it: never its secret or hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyView {
    /// The public id (`flt_<id>_…`).
    pub id: String,
    #[schema(value_type = String, format = Uuid)]
    pub tenant_id: TenantId,
    pub role: Role,
    pub name: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
}

/// `POST /v1/keys`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    /// What the key is for: 1–100 characters without control characters once surrounding
    /// whitespace is trimmed.
    #[schema(
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]([^\x00-\x1f\x7f-\x9f]{0,98}[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: String,
    pub role: Role,
    /// When the key stops working; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime, example = "2100-01-01T00:00:00Z")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
}

/// The answer to `POST /v1/keys`: the only time the full key is shown.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The key to send as `Authorization: Bearer …`. Store it now: it is not shown again.
    pub key: String,
    #[serde(flatten)]
    pub record: KeyView,
}

impl fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedKey")
            .field("key", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

/// `GET /v1/keys`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
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
    use crate::enum_names::{assert_names, parse_with_serde};

    #[test]
    fn role_names_are_pinned() {
        assert_names(
            &[
                (Role::Admin, "admin"),
                (Role::Operator, "operator"),
                (Role::Submitter, "submitter"),
                (Role::Agent, "agent"),
                (Role::Viewer, "viewer"),
            ],
            Role::as_str,
            |name| name.parse().ok(),
        );
        assert_eq!(Role::Submitter.to_string(), "submitter");
        let err = "root".parse::<Role>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unknown role `root`; expected admin, operator, submitter, agent or viewer")
        );
    }

    #[test]
    fn permission_names_are_pinned() {
        assert_names(
            &[
                (Permission::SubmitTasks, "submit_tasks"),
                (Permission::ReadTasks, "read_tasks"),
                (Permission::CancelTasks, "cancel_tasks"),
                (Permission::RegisterAgents, "register_agents"),
                (Permission::ReadFleet, "read_fleet"),
                (Permission::ReadAlerts, "read_alerts"),
                (Permission::SilenceAlerts, "silence_alerts"),
                (Permission::ReadKeys, "read_keys"),
                (Permission::ManageKeys, "manage_keys"),
                (Permission::ManageTenants, "manage_tenants"),
                (Permission::ListSecrets, "list_secrets"),
                (Permission::ReadSecrets, "read_secrets"),
                (Permission::WriteSecrets, "write_secrets"),
                (Permission::ReadAudit, "read_audit"),
                (Permission::CallModels, "call_models"),
            ],
            Permission::as_str,
            parse_with_serde,
        );
        assert_eq!(Permission::ReadAudit.to_string(), "read_audit");
    }

    #[test]
    fn the_lists_of_roles_and_permissions_are_complete() {
        use strum::IntoEnumIterator;
        assert_eq!(Role::ALL.to_vec(), Role::iter().collect::<Vec<_>>());
        assert_eq!(
            Permission::ALL.to_vec(),
            Permission::iter().collect::<Vec<_>>()
        );
    }

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
