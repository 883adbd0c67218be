//! The audit log's chain (docs/security.md, "Audit log"). Each entry's `hash` is a MAC
//! (HMAC-SHA-256) over its own fields and the previous entry's hash, under a key derived from the
//! master key (`mac_key` names which): altering a row changes its MAC and breaks the link to the
//! next, removing one leaves a gap, and — unlike a plain hash — someone who can write the
//! database but does not hold the master key cannot compute the MACs of a rewritten chain.
//!
//! Entries written before MACs existed (`mac_key` absent) carry a plain SHA-256 hash; they may
//! only precede the first MAC'd entry, which re-anchors the chain (`audit.reanchor`). Pruning old
//! entries appends an `audit.prune` entry naming the last pruned one (`SEQ:HASH`), so the rest
//! still verifies from its first remaining entry. [`verify`] checks a chain.

use crate::Timestamp;
use crate::id::TenantId;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod verify;

pub use verify::{Broken, Start, verify};

/// The action of the entry that starts MAC chaining after plain-hashed entries.
pub const REANCHOR: &str = "audit.reanchor";
/// The action of the entry that records a prune; its target is `SEQ:HASH` of the last pruned
/// entry.
pub const PRUNE: &str = "audit.prune";

/// The hash that precedes the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One entry as stored and served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// The public id of the acting key; absent when nobody could be identified.
    pub actor: Option<String>,
    #[schema(value_type = Option<String>)]
    pub tenant_id: Option<TenantId>,
    /// Dotted name of the action, e.g. `key.create`, `secret.read`, `auth.failure`.
    pub action: String,
    pub target: String,
    /// `success`, `denied` or `failed`.
    pub outcome: String,
    /// The peer address the request came from.
    pub source: Option<String>,
    /// Hash of the previous entry ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// HMAC-SHA-256 (hex) over `prev_hash` and this entry's fields under the key `mac_key`; a
    /// plain SHA-256 for entries written before MACs (no `mac_key`).
    pub hash: String,
    /// The id of the master key whose derived audit key MAC'd this entry; absent on entries
    /// written before MACs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_key: Option<String>,
}

/// The key that MACs audit entries: derived from a master key, named by that key's id.
#[derive(Clone)]
pub struct MacKey {
    pub id: String,
    key: [u8; 32],
}

impl MacKey {
    pub fn new(id: impl Into<String>, key: [u8; 32]) -> Self {
        MacKey { id: id.into(), key }
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// `GET /v1/audit`: a page of entries, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

/// `GET /v1/audit/verify`: what checking the whole log found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditVerification {
    /// True when every MAC and link holds from the start.
    pub intact: bool,
    /// Entries checked.
    pub checked: usize,
    /// The newest entry as `SEQ:HASH`: record it, and pass it as `since` later to find out
    /// whether newer entries were deleted.
    pub head: Option<String>,
    /// The first problem found, when not intact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The fields of an entry before it is chained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAuditEntry {
    pub at: Timestamp,
    pub actor: Option<String>,
    pub tenant_id: Option<TenantId>,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub source: Option<String>,
}

impl NewAuditEntry {
    /// Chains this entry after the one with `prev_hash` at position `seq`, MAC'd with `key`.
    pub fn chain(self, seq: i64, prev_hash: &str, key: &MacKey) -> AuditEntry {
        let mut entry = AuditEntry {
            seq,
            at: self.at,
            actor: self.actor,
            tenant_id: self.tenant_id,
            action: self.action,
            target: self.target,
            outcome: self.outcome,
            source: self.source,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
            mac_key: Some(key.id.clone()),
        };
        entry.hash = entry_mac(&entry, key);
        entry
    }
}

/// The plain hash an entry written before MACs carries (`flotilla-audit-v1`).
pub fn entry_hash(entry: &AuditEntry) -> String {
    let mut hasher = Sha256::new();
    fields(entry, b"flotilla-audit-v1", |bytes| hasher.update(bytes));
    hex::encode(hasher.finalize())
}

/// The MAC an entry chained under `key` carries (`flotilla-audit-v2`, which also covers the key
/// id).
pub fn entry_mac(entry: &AuditEntry, key: &MacKey) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key.key) else {
        return String::new();
    };
    fields(entry, b"flotilla-audit-v2", |bytes| mac.update(bytes));
    mac.update(&(key.id.len() as u64).to_be_bytes());
    mac.update(key.id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Feeds an entry's fields to `update`, each length-prefixed so that no two different entries
/// give the same bytes; the timestamp is in microseconds, as stored.
fn fields(entry: &AuditEntry, version: &[u8], mut update: impl FnMut(&[u8])) {
    let mut field = |bytes: &[u8]| {
        update(&(bytes.len() as u64).to_be_bytes());
        update(bytes);
    };
    fn optional(s: &Option<String>) -> &[u8] {
        s.as_deref().map_or(b"\0none", str::as_bytes)
    }
    let tenant = entry.tenant_id.map(|t| t.to_string());
    field(version);
    field(entry.prev_hash.as_bytes());
    field(&entry.seq.to_be_bytes());
    field(&entry.at.timestamp_micros().to_be_bytes());
    field(optional(&entry.actor));
    field(optional(&tenant));
    field(entry.action.as_bytes());
    field(entry.target.as_bytes());
    field(entry.outcome.as_bytes());
    field(optional(&entry.source));
}
