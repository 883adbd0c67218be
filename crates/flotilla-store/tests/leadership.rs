//! What several control planes share besides the queue, on every `Store` (SQLite and
//! PostgreSQL, like behaviour.rs): leader leases (one holder at a time, renewal by the holder,
//! take-over only after expiry or release, a generation that grows with each change of hands,
//! exactly one winner among concurrent claimants), notifications, and the alert engine's
//! silences and board.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[macro_use]
mod support;

use chrono::TimeZone;
use flotilla_core::Timestamp;
use flotilla_store::DynStore;
use support::Backend;

behaviours!(
    the_first_claimant_leads_and_renews,
    another_takes_over_only_after_expiry,
    a_release_hands_over_at_once,
    concurrent_claimants_get_one_leader,
    leases_are_independent_by_name,
    notifications_reach_every_listener,
    live_leases_are_counted_and_old_ones_forgotten,
    silences_last_until_they_end_and_the_board_keeps_the_latest,
    a_fenced_requeue_runs_only_in_its_term,
);

const LEASE: &str = "control-plane";

fn at(s: i64) -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2025, 3, 10, 12, 0, 0)
        .single()
        .unwrap()
        + chrono::Duration::seconds(s)
}

async fn the_first_claimant_leads_and_renews(store: DynStore) {
    let lease = store.claim_lease(LEASE, "a", at(0), at(10)).await.unwrap();
    assert_eq!((lease.holder.as_str(), lease.generation), ("a", 1));
    assert_eq!(lease.expires_at, at(10));
    let renewed = store.claim_lease(LEASE, "a", at(5), at(15)).await.unwrap();
    assert_eq!((renewed.holder.as_str(), renewed.generation), ("a", 1));
    assert_eq!(renewed.expires_at, at(15), "a renewal extends the lease");
}

async fn another_takes_over_only_after_expiry(store: DynStore) {
    store.claim_lease(LEASE, "a", at(0), at(10)).await.unwrap();
    let refused = store.claim_lease(LEASE, "b", at(9), at(19)).await.unwrap();
    assert_eq!(refused.holder, "a", "the lease has not ended");
    assert_eq!(
        refused.expires_at,
        at(10),
        "a refused claim changes nothing"
    );
    let at_end = store.claim_lease(LEASE, "b", at(10), at(20)).await.unwrap();
    assert_eq!(at_end.holder, "a", "a lease ending at 10 still holds at 10");
    let taken = store.claim_lease(LEASE, "b", at(11), at(21)).await.unwrap();
    assert_eq!((taken.holder.as_str(), taken.generation), ("b", 2));
    // The old holder comes back: it is refused and sees who leads.
    let old = store.claim_lease(LEASE, "a", at(12), at(22)).await.unwrap();
    assert_eq!((old.holder.as_str(), old.generation), ("b", 2));
    // Back and forth, the generation keeps growing.
    let back = store.claim_lease(LEASE, "a", at(30), at(40)).await.unwrap();
    assert_eq!((back.holder.as_str(), back.generation), ("a", 3));
}

async fn a_release_hands_over_at_once(store: DynStore) {
    store.claim_lease(LEASE, "a", at(0), at(10)).await.unwrap();
    assert!(
        !store.release_lease(LEASE, "b", at(1)).await.unwrap(),
        "b holds nothing"
    );
    assert!(store.release_lease(LEASE, "a", at(1)).await.unwrap());
    let taken = store.claim_lease(LEASE, "b", at(1), at(11)).await.unwrap();
    assert_eq!((taken.holder.as_str(), taken.generation), ("b", 2));
}

async fn concurrent_claimants_get_one_leader(store: DynStore) {
    let claims = (0..16).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let me = format!("replica-{i}");
            let lease = store.claim_lease(LEASE, &me, at(0), at(10)).await.unwrap();
            (me, lease)
        })
    });
    let mut leaders = std::collections::BTreeSet::new();
    let mut winners = 0;
    for claim in claims {
        let (me, lease) = claim.await.unwrap();
        leaders.insert(lease.holder.clone());
        winners += usize::from(lease.holder == me);
        assert_eq!(lease.generation, 1);
    }
    assert_eq!(winners, 1, "exactly one claimant won");
    assert_eq!(leaders.len(), 1, "every claimant sees the same leader");
}

async fn leases_are_independent_by_name(store: DynStore) {
    store.claim_lease("one", "a", at(0), at(10)).await.unwrap();
    let other = store.claim_lease("two", "b", at(0), at(10)).await.unwrap();
    assert_eq!(other.holder, "b");
}

async fn notifications_reach_every_listener(store: DynStore) {
    let Some(mut first) = store.listen().await.unwrap() else {
        assert_eq!(
            store.topology(),
            flotilla_store::Topology::Embedded,
            "only SQLite has no notifications"
        );
        store.notify("ignored").await.unwrap();
        return;
    };
    let mut second = store.listen().await.unwrap().unwrap();
    store.notify("queued:reviewer").await.unwrap();
    store.notify("done:1,2").await.unwrap();
    for listener in [&mut first, &mut second] {
        let mut got = Vec::new();
        while got.len() < 2 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
                .await
                .expect("a notification within 5 s")
                .unwrap();
            got.extend(next);
        }
        assert_eq!(
            got,
            ["queued:reviewer", "done:1,2"],
            "in order, to each listener"
        );
    }
}

async fn live_leases_are_counted_and_old_ones_forgotten(store: DynStore) {
    store
        .claim_lease("replica:a", "a", at(0), at(10))
        .await
        .unwrap();
    store
        .claim_lease("replica:b", "b", at(0), at(20))
        .await
        .unwrap();
    store
        .claim_lease("replica:c", "c", at(0), at(1))
        .await
        .unwrap();
    store.claim_lease(LEASE, "a", at(0), at(30)).await.unwrap();
    assert_eq!(
        store.live_leases("replica:", at(5), at(0)).await.unwrap(),
        2
    );
    assert_eq!(
        store.live_leases("replica:", at(15), at(0)).await.unwrap(),
        1
    );
    // c ended at 1: forgotten, so a claim by another holder starts a new row at generation 1.
    assert_eq!(
        store.live_leases("replica:", at(15), at(2)).await.unwrap(),
        1
    );
    let again = store
        .claim_lease("replica:c", "z", at(16), at(26))
        .await
        .unwrap();
    assert_eq!((again.holder.as_str(), again.generation), ("z", 1));
    assert_eq!(
        store
            .claim_lease(LEASE, "a", at(16), at(30))
            .await
            .unwrap()
            .holder,
        "a",
        "other names are untouched"
    );
}

async fn silences_last_until_they_end_and_the_board_keeps_the_latest(store: DynStore) {
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    store.put_silence(a, at(10), r#"{"id":"a"}"#).await.unwrap();
    store.put_silence(b, at(20), r#"{"id":"b"}"#).await.unwrap();
    assert_eq!(
        store.list_silences(at(5)).await.unwrap(),
        [r#"{"id":"a"}"#, r#"{"id":"b"}"#]
    );
    assert_eq!(
        store.list_silences(at(10)).await.unwrap(),
        [r#"{"id":"b"}"#],
        "a ended"
    );
    assert_eq!(
        store.delete_silence(a).await.unwrap(),
        None,
        "ended ones are gone"
    );
    assert_eq!(
        store.delete_silence(b).await.unwrap().as_deref(),
        Some(r#"{"id":"b"}"#)
    );
    assert!(store.list_silences(at(0)).await.unwrap().is_empty());

    assert_eq!(store.get_board("active").await.unwrap(), None);
    store.put_board("active", "[1]", at(1)).await.unwrap();
    store.put_board("active", "[2]", at(2)).await.unwrap();
    assert_eq!(
        store.get_board("active").await.unwrap(),
        Some(("[2]".to_owned(), at(2)))
    );
}

async fn a_fenced_requeue_runs_only_in_its_term(store: DynStore) {
    use flotilla_core::id::{TaskId, TenantId};
    use flotilla_core::task::NewTask;
    // A task claimed by a replica that died, its lease over at 2 s.
    let id = TaskId(uuid::Uuid::now_v7());
    store
        .insert_tasks(&[NewTask {
            id,
            tenant_id: TenantId::DEFAULT,
            agent_type: "echo".to_owned(),
            input: serde_json::json!({}),
            priority: 5,
            complexity: None,
            idempotency_key: None,
            timeout_ms: 1000,
            max_attempts: 3,
            trace_id: None,
            created_at: at(0),
            // Claimed as it was inserted, by a replica that then died; its lease ends at 2 s.
            claim: Some(flotilla_core::task::Lease {
                owner: "dead".to_owned(),
                expires_at: at(2),
            }),
        }])
        .await
        .unwrap();
    let first = store.claim_lease(LEASE, "a", at(0), at(10)).await.unwrap();
    let fence = |holder: &str, generation| flotilla_store::Fence {
        lease: LEASE.to_owned(),
        holder: holder.to_owned(),
        generation,
    };
    // b took over at 11: a's term (generation 1) is over, whatever a believes.
    store.claim_lease(LEASE, "b", at(11), at(21)).await.unwrap();
    let stale = store
        .requeue_expired(at(12), Some(&fence("a", first.generation)), 3)
        .await
        .unwrap();
    assert!(stale.is_empty(), "a stale leader requeues nothing");
    let current = store
        .requeue_expired(at(12), Some(&fence("b", 2)), 3)
        .await
        .unwrap();
    assert_eq!(current.iter().map(|r| r.task_id).collect::<Vec<_>>(), [id]);
}
