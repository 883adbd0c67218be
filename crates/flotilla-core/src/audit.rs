//! The audit log's hash chain. Each entry's hash covers its own fields and the previous entry's
//! hash, so altering any row changes its hash and breaks the link to the next, and removing a row
//! leaves a gap in the sequence and a broken link. [`verify`] walks a chain and reports the
//! first broken link; the CLI runs it on what the API or an export returns, so the check does
//! not have to trust the server that wrote the log.

use crate::Timestamp;
use crate::id::TenantId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    /// SHA-256 (hex) over `prev_hash` and this entry's fields.
    pub hash: String,
}

/// `GET /v1/audit`: a page of entries, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
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
    /// Chains this entry after the one with `prev_hash` at position `seq`.
    pub fn chain(self, seq: i64, prev_hash: &str) -> AuditEntry {
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
        };
        entry.hash = entry_hash(&entry);
        entry
    }
}

/// The hash an entry should carry. Every field is length-prefixed, so no two different entries
/// hash the same bytes; the timestamp is in microseconds, as stored.
pub fn entry_hash(entry: &AuditEntry) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    fn optional(s: &Option<String>) -> &[u8] {
        s.as_deref().map_or(b"\0none", str::as_bytes)
    }
    let tenant = entry.tenant_id.map(|t| t.to_string());
    field(b"flotilla-audit-v1");
    field(entry.prev_hash.as_bytes());
    field(&entry.seq.to_be_bytes());
    field(&entry.at.timestamp_micros().to_be_bytes());
    field(optional(&entry.actor));
    field(optional(&tenant));
    field(entry.action.as_bytes());
    field(entry.target.as_bytes());
    field(entry.outcome.as_bytes());
    field(optional(&entry.source));
    hex::encode(hasher.finalize())
}

/// Where a chain stops being trustworthy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// The entry's fields do not match its hash: it was altered.
    #[error("entry {seq} was altered: its hash does not match its contents")]
    Altered { seq: i64 },
    /// The entry does not point at the hash of the entry before it: an entry before it was
    /// removed, inserted or altered along with its hash.
    #[error(
        "entry {seq} does not follow the entry before it (expected previous hash {expected}, found {found})"
    )]
    Unlinked {
        seq: i64,
        expected: String,
        found: String,
    },
    /// Sequence numbers skip: entries between were removed.
    #[error("entries {from}..{to} are missing")]
    Gap { from: i64, to: i64 },
}

/// Checks a run of consecutive entries, oldest first. `start` is the hash the first entry must
/// follow ([`GENESIS`] when it is entry 1, else the hash of the entry before, if known); returns
/// how many entries were checked.
pub fn verify(entries: &[AuditEntry], start: Option<&str>) -> Result<usize, Broken> {
    let mut expected: Option<(i64, String)> = None;
    for (i, entry) in entries.iter().enumerate() {
        if entry_hash(entry) != entry.hash {
            return Err(Broken::Altered { seq: entry.seq });
        }
        let (want_seq, want_prev) = match &expected {
            Some((seq, hash)) => (Some(*seq), Some(hash.as_str())),
            None if entry.seq == 1 => (Some(1), Some(GENESIS)),
            None => (None, start),
        };
        if i == 0 && entry.seq > 1 && start.is_none() {
            // A page in the middle of the chain: its first link is checked by the page before.
        } else {
            if let Some(want) = want_seq
                && entry.seq != want
            {
                return Err(Broken::Gap {
                    from: want,
                    to: entry.seq - 1,
                });
            }
            if let Some(want) = want_prev
                && entry.prev_hash != want
            {
                return Err(Broken::Unlinked {
                    seq: entry.seq,
                    expected: want.to_owned(),
                    found: entry.prev_hash.clone(),
                });
            }
        }
        expected = Some((entry.seq + 1, entry.hash.clone()));
    }
    Ok(entries.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let entry = NewAuditEntry {
                    at: chrono::Utc
                        .timestamp_micros(1_700_000_000_000_000 + seq)
                        .unwrap(),
                    actor: Some("abc".into()),
                    tenant_id: Some(TenantId::DEFAULT),
                    action: "key.create".into(),
                    target: format!("key{seq}"),
                    outcome: "success".into(),
                    source: Some("127.0.0.1".into()),
                }
                .chain(seq, &prev);
                prev = entry.hash.clone();
                entry
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5), None), Ok(5));
        assert_eq!(verify(&[], None), Ok(0));
    }

    #[test]
    fn an_altered_field_is_found_at_its_entry() {
        let mut entries = chain(5);
        entries[2].outcome = "denied".into();
        assert_eq!(verify(&entries, None), Err(Broken::Altered { seq: 3 }));
    }

    #[test]
    fn an_altered_entry_with_a_recomputed_hash_breaks_the_next_link() {
        let mut entries = chain(5);
        entries[2].target = "other".into();
        entries[2].hash = entry_hash(&entries[2]);
        assert!(matches!(
            verify(&entries, None),
            Err(Broken::Unlinked { seq: 4, .. })
        ));
    }

    #[test]
    fn a_removed_entry_is_a_gap() {
        let mut entries = chain(5);
        entries.remove(1);
        assert_eq!(verify(&entries, None), Err(Broken::Gap { from: 2, to: 2 }));
        let mut entries = chain(5);
        entries.remove(0);
        assert!(verify(&entries, Some(GENESIS)).is_err());
    }

    #[test]
    fn a_renumbered_chain_after_removal_is_unlinked() {
        let mut entries = chain(5);
        entries.remove(1);
        for entry in entries.iter_mut().skip(1) {
            entry.seq -= 1;
            entry.hash = entry_hash(entry);
        }
        assert!(matches!(
            verify(&entries, None),
            Err(Broken::Unlinked { seq: 2, .. })
        ));
    }
}
