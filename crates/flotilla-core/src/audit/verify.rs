//! Checking an audit chain: every MAC, every link, from entry 1 (or from the prune that removed
//! the entries before the first one left), or from an anchor the operator recorded.

use super::{AuditEntry, GENESIS, MacKey, PRUNE, entry_hash, entry_mac};

/// Where the check starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// From entry 1 — or from the first entry left after a prune, which an `audit.prune` entry
    /// in the chain must account for.
    Beginning,
    /// From a known entry (`--since SEQ:HASH`): the log must still hold entry `seq` with this
    /// hash (unless a prune removed it), and everything after it is checked.
    Anchor { seq: i64, hash: String },
}

impl std::str::FromStr for Start {
    type Err = String;

    /// `SEQ:HASH`, as `flotilla audit verify` prints the head.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (seq, hash) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not SEQ:HASH"))?;
        let seq: i64 = seq
            .parse()
            .map_err(|_| format!("`{seq}` is not a sequence number"))?;
        if seq < 1 || hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "`{s}` is not SEQ:HASH (a positive number and 64 hex digits)"
            ));
        }
        Ok(Start::Anchor {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

/// Where a chain stops being trustworthy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// The entry's fields do not match its MAC (or, before MACs, its hash): it was altered.
    #[error("entry {seq} was altered: its MAC does not match its contents")]
    Altered { seq: i64 },
    /// The entry does not point at the hash of the entry before it.
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
    /// The oldest entries are gone and no `audit.prune` entry accounts for them.
    #[error(
        "entries 1..{last_missing} are missing and no audit.prune entry accounts for them: the oldest entries were deleted"
    )]
    OldestMissing { last_missing: i64 },
    /// The anchor's entry is not in the log, or has another hash.
    #[error("entry {seq} does not have the anchor's hash {expected} (found {found})")]
    AnchorMismatch {
        seq: i64,
        expected: String,
        found: String,
    },
    /// The log ends before the anchor: its newest entries were deleted.
    #[error(
        "the log ends at entry {last} but the anchor is entry {anchor}: newer entries were deleted"
    )]
    EndsBeforeAnchor { last: i64, anchor: i64 },
    /// The entry names a MAC key that is not configured.
    #[error(
        "entry {seq} is MAC'd with the audit key of master key {key}, which is not configured (set it in FLOTILLA_MASTER_KEY or FLOTILLA_PREVIOUS_MASTER_KEYS)"
    )]
    UnknownKey { seq: i64, key: String },
    /// A plain-hashed entry after a MAC'd one, or a log that ends plain-hashed: plain hashes
    /// can be recomputed by anyone, so they are trusted only before the re-anchor.
    #[error(
        "entry {seq} carries a plain hash where a MAC is required (a rewritten chain, or one never re-anchored by a control plane)"
    )]
    Unkeyed { seq: i64 },
}

/// Checks a run of consecutive entries, oldest first, from `start`, with the MAC keys `keys`
/// finds by id. Returns how many entries were checked.
pub fn verify(
    entries: &[AuditEntry],
    start: &Start,
    keys: &dyn Fn(&str) -> Option<MacKey>,
) -> Result<usize, Broken> {
    let Some(first) = entries.first() else {
        return match start {
            Start::Beginning => Ok(0),
            Start::Anchor { seq, .. } => Err(Broken::EndsBeforeAnchor {
                last: 0,
                anchor: *seq,
            }),
        };
    };
    let from = match start {
        Start::Beginning => 0,
        Start::Anchor { seq, hash } => match entries.iter().position(|e| e.seq == *seq) {
            Some(i) if entries[i].hash == *hash => i,
            Some(i) => {
                return Err(Broken::AnchorMismatch {
                    seq: *seq,
                    expected: hash.clone(),
                    found: entries[i].hash.clone(),
                });
            }
            None if *seq < first.seq => 0,
            None => {
                return Err(Broken::EndsBeforeAnchor {
                    last: entries.last().map_or(0, |e| e.seq),
                    anchor: *seq,
                });
            }
        },
    };
    if from == 0 && first.seq > 1 && !pruned_before(entries, first) {
        return Err(Broken::OldestMissing {
            last_missing: first.seq - 1,
        });
    }
    if from == 0 && first.seq == 1 && first.prev_hash != GENESIS {
        return Err(Broken::Unlinked {
            seq: 1,
            expected: GENESIS.to_owned(),
            found: first.prev_hash.clone(),
        });
    }
    let mut macs_began = false;
    let mut previous: Option<&AuditEntry> = None;
    for entry in &entries[from..] {
        match &entry.mac_key {
            Some(id) => {
                let key = keys(id).ok_or_else(|| Broken::UnknownKey {
                    seq: entry.seq,
                    key: id.clone(),
                })?;
                if entry_mac(entry, &key) != entry.hash {
                    return Err(Broken::Altered { seq: entry.seq });
                }
                macs_began = true;
            }
            None if macs_began => return Err(Broken::Unkeyed { seq: entry.seq }),
            None => {
                if entry_hash(entry) != entry.hash {
                    return Err(Broken::Altered { seq: entry.seq });
                }
            }
        }
        if let Some(previous) = previous {
            if entry.seq != previous.seq + 1 {
                return Err(Broken::Gap {
                    from: previous.seq + 1,
                    to: entry.seq - 1,
                });
            }
            if entry.prev_hash != previous.hash {
                return Err(Broken::Unlinked {
                    seq: entry.seq,
                    expected: previous.hash.clone(),
                    found: entry.prev_hash.clone(),
                });
            }
        }
        previous = Some(entry);
    }
    // Every control plane re-anchors a plain-hashed head at start, so a genuine log ends MAC'd.
    if let Some(last) = entries.last()
        && last.mac_key.is_none()
    {
        return Err(Broken::Unkeyed { seq: last.seq });
    }
    Ok(entries.len() - from)
}

/// Whether an `audit.prune` entry (MAC'd, checked with the rest) names the entry just before
/// `first`.
fn pruned_before(entries: &[AuditEntry], first: &AuditEntry) -> bool {
    let expected = format!("{}:{}", first.seq - 1, first.prev_hash);
    entries
        .iter()
        .any(|e| e.action == PRUNE && e.mac_key.is_some() && e.target == expected)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
