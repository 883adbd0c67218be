use super::*;
use crate::audit::{NewAuditEntry, REANCHOR};
use crate::id::TenantId;
use chrono::TimeZone;

fn key() -> MacKey {
    MacKey::new("k1", [7; 32])
}

fn keys(id: &str) -> Option<MacKey> {
    (id == "k1").then(key)
}

fn new(seq: i64, action: &str, target: &str) -> NewAuditEntry {
    NewAuditEntry {
        at: chrono::Utc
            .timestamp_micros(1_700_000_000_000_000 + seq)
            .unwrap(),
        actor: Some("abc".into()),
        tenant_id: Some(TenantId::DEFAULT),
        action: action.into(),
        target: target.into(),
        outcome: "success".into(),
        source: Some("127.0.0.1".into()),
    }
}

/// Appends `n` MAC'd entries after `entries`.
fn extend(entries: &mut Vec<AuditEntry>, n: i64) {
    for _ in 0..n {
        let (seq, prev) = entries
            .last()
            .map_or((1, GENESIS.to_owned()), |e| (e.seq + 1, e.hash.clone()));
        entries.push(new(seq, "key.create", &format!("key{seq}")).chain(seq, &prev, &key()));
    }
}

fn chain(n: i64) -> Vec<AuditEntry> {
    let mut entries = Vec::new();
    extend(&mut entries, n);
    entries
}

fn check(entries: &[AuditEntry]) -> Result<usize, Broken> {
    verify(entries, &Start::Beginning, &keys)
}

#[test]
fn an_intact_chain_verifies() {
    assert_eq!(check(&chain(5)), Ok(5));
    assert_eq!(check(&[]), Ok(0));
}

#[test]
fn an_altered_field_is_found_at_its_entry() {
    let mut entries = chain(5);
    entries[2].outcome = "denied".into();
    assert_eq!(check(&entries), Err(Broken::Altered { seq: 3 }));
}

#[test]
fn a_rewritten_chain_without_the_key_does_not_verify() {
    // Whoever writes the database recomputes every hash after changing entry 3 — plain hashes
    // (what the log used before MACs) or MACs under a key of their own: both are found.
    let mut entries = chain(5);
    entries[2].target = "other".into();
    let forged = MacKey::new("k1", [8; 32]);
    let mut prev = entries[1].hash.clone();
    for entry in entries.iter_mut().skip(2) {
        entry.prev_hash = prev;
        entry.hash = entry_mac(entry, &forged);
        prev = entry.hash.clone();
    }
    assert_eq!(check(&entries), Err(Broken::Altered { seq: 3 }));
    let mut plain = chain(5);
    let mut prev = GENESIS.to_owned();
    for entry in &mut plain {
        entry.mac_key = None;
        entry.prev_hash = prev;
        entry.hash = entry_hash(entry);
        prev = entry.hash.clone();
    }
    assert_eq!(check(&plain), Err(Broken::Unkeyed { seq: 5 }));
}

#[test]
fn removed_entries_are_found_wherever_they_were() {
    let mut entries = chain(5);
    entries.remove(1);
    assert_eq!(check(&entries), Err(Broken::Gap { from: 2, to: 2 }));
    // The oldest ones: reported, not taken for a page in the middle.
    let entries = chain(5)[2..].to_vec();
    assert_eq!(
        check(&entries),
        Err(Broken::OldestMissing { last_missing: 2 })
    );
}

#[test]
fn a_prune_entry_accounts_for_the_oldest_entries() {
    let mut entries = chain(5);
    let target = format!("3:{}", entries[2].hash);
    let (seq, prev) = (6, entries[4].hash.clone());
    entries.push(new(seq, PRUNE, &target).chain(seq, &prev, &key()));
    extend(&mut entries, 2);
    let kept = entries[3..].to_vec();
    assert_eq!(check(&kept), Ok(5));
    // Deleting one more than the prune names is still found.
    assert_eq!(
        check(&entries[4..]),
        Err(Broken::OldestMissing { last_missing: 4 })
    );
}

#[test]
fn plain_entries_verify_only_before_the_reanchor() {
    // A log from before MACs, re-anchored by the first control plane that MACs.
    let mut entries = Vec::new();
    let mut prev = GENESIS.to_owned();
    for seq in 1..=3 {
        let mut entry = new(seq, "key.create", "k").chain(seq, &prev, &key());
        entry.mac_key = None;
        entry.hash = entry_hash(&entry);
        prev = entry.hash.clone();
        entries.push(entry);
    }
    entries.push(new(4, REANCHOR, "1..3").chain(4, &prev, &key()));
    extend(&mut entries, 2);
    assert_eq!(check(&entries), Ok(6));
    // A plain entry after the re-anchor is a downgrade.
    let mut downgraded = entries.clone();
    downgraded[5].mac_key = None;
    downgraded[5].hash = entry_hash(&downgraded[5]);
    assert_eq!(check(&downgraded), Err(Broken::Unkeyed { seq: 6 }));
}

#[test]
fn an_anchor_checks_from_its_entry_and_finds_a_cut_tail() {
    let entries = chain(6);
    let anchor = |seq: i64, hash: &str| Start::Anchor {
        seq,
        hash: hash.to_owned(),
    };
    let at3 = anchor(3, &entries[2].hash);
    assert_eq!(verify(&entries, &at3, &keys), Ok(4));
    assert!(matches!(
        verify(&entries, &anchor(3, &entries[3].hash), &keys),
        Err(Broken::AnchorMismatch { seq: 3, .. })
    ));
    // The newest entries were deleted, the anchor with them.
    let at6 = anchor(6, &entries[5].hash);
    assert_eq!(
        verify(&entries[..4], &at6, &keys),
        Err(Broken::EndsBeforeAnchor { last: 4, anchor: 6 })
    );
    assert_eq!(format!("6:{}", entries[5].hash).parse::<Start>(), Ok(at6));
    assert_eq!(
        verify(&[], &anchor(6, &entries[5].hash), &keys),
        Err(Broken::EndsBeforeAnchor { last: 0, anchor: 6 })
    );
    assert!("6:xyz".parse::<Start>().is_err());
    assert!("nothing".parse::<Start>().is_err());
}

#[test]
fn an_unknown_key_is_named() {
    let entries = chain(2);
    assert_eq!(
        verify(&entries, &Start::Beginning, &|_| None),
        Err(Broken::UnknownKey {
            seq: 1,
            key: "k1".into()
        })
    );
}
