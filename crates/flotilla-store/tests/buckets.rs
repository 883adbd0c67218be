//! Rate-limit buckets on every `Store` (SQLite and PostgreSQL, like behaviour.rs): takes are all
//! or nothing, buckets refill with the time the caller gives, reservations settle both ways, a
//! changed capacity rescales, only full idle buckets are pruned, and concurrent takes never grant
//! more than the capacity.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// This suite needs only `support::run`.
#[allow(dead_code)]
#[macro_use]
mod support;

use chrono::TimeZone;
use flotilla_core::Timestamp;
use flotilla_store::{BucketSettle, BucketTake, DynStore};
use std::time::Duration;
use support::Backend;

behaviours!(
    a_take_is_all_or_nothing,
    buckets_refill_with_the_time_given,
    settling_gives_back_or_takes_the_difference,
    a_changed_capacity_rescales_the_stored_bucket,
    only_full_idle_buckets_are_pruned,
    concurrent_takes_grant_exactly_the_capacity,
);

const MINUTE: Duration = Duration::from_secs(60);

/// 2025-03-10 12:00:00.123456789 UTC, plus `ms` (nanoseconds that the store drops on purpose).
fn at(ms: i64) -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2025, 3, 10, 12, 0, 0)
        .single()
        .unwrap()
        + chrono::Duration::nanoseconds(123_456_789)
        + chrono::Duration::milliseconds(ms)
}

fn take(subject: &str, capacity: u64, n: u64) -> BucketTake {
    BucketTake {
        subject: subject.to_owned(),
        capacity,
        period: MINUTE,
        n,
    }
}

fn settle(subject: &str, capacity: u64, reserved: u64, actual: u64) -> BucketSettle {
    BucketSettle {
        subject: subject.to_owned(),
        capacity,
        period: MINUTE,
        reserved,
        actual,
    }
}

async fn a_take_is_all_or_nothing(store: DynStore) {
    let now = at(0);
    assert_eq!(store.take_buckets(&[], now).await.unwrap(), Ok(()));
    // 5 of 10 requests and 900 of 1000 tokens.
    let ok = [take("tenant-req:a", 10, 5), take("tenant-tok:a", 1000, 900)];
    assert_eq!(store.take_buckets(&ok, now).await.unwrap(), Ok(()));
    // The token bucket refuses 200 (100 left; 100 more come in 6 s): the request bucket gives
    // nothing either, and a bucket seen for the first time is not created.
    let refused = [
        take("tenant-req:a", 10, 1),
        take("key-req:k", 10, 1),
        take("tenant-tok:a", 1000, 200),
    ];
    assert_eq!(
        store.take_buckets(&refused, now).await.unwrap(),
        Err((2, Duration::from_secs(6)))
    );
    // Still 5 requests left: 5 pass, the 6th is refused with a 6 s wait (one per 6 s).
    let five = [take("tenant-req:a", 10, 5), take("tenant-tok:a", 1000, 100)];
    assert_eq!(store.take_buckets(&five, now).await.unwrap(), Ok(()));
    assert_eq!(
        store
            .take_buckets(&[take("tenant-req:a", 10, 1)], now)
            .await
            .unwrap(),
        Err((0, Duration::from_secs(6)))
    );
    // The key's bucket was not created by the refused take: it is full.
    assert_eq!(
        store
            .take_buckets(&[take("key-req:k", 10, 10)], now)
            .await
            .unwrap(),
        Ok(())
    );
}

async fn buckets_refill_with_the_time_given(store: DynStore) {
    let one = [take("key-req:k", 60, 1)];
    assert_eq!(
        store
            .take_buckets(&[take("key-req:k", 60, 60)], at(0))
            .await
            .unwrap(),
        Ok(())
    );
    // One unit per second.
    assert_eq!(
        store.take_buckets(&one, at(0)).await.unwrap(),
        Err((0, Duration::from_millis(1000)))
    );
    assert_eq!(
        store.take_buckets(&one, at(400)).await.unwrap(),
        Err((0, Duration::from_millis(600)))
    );
    assert_eq!(store.take_buckets(&one, at(1000)).await.unwrap(), Ok(()));
    assert_eq!(
        store.take_buckets(&one, at(1000)).await.unwrap(),
        Err((0, Duration::from_millis(1000)))
    );
    // A minute later the bucket is full again, and no fuller.
    assert_eq!(
        store
            .take_buckets(&[take("key-req:k", 60, 60)], at(600_000))
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        store.take_buckets(&one, at(600_000)).await.unwrap(),
        Err((0, Duration::from_millis(1000)))
    );
}

async fn settling_gives_back_or_takes_the_difference(store: DynStore) {
    let now = at(0);
    let tok = |n| [take("tenant-tok:a", 1000, n)];
    assert_eq!(store.take_buckets(&tok(800), now).await.unwrap(), Ok(()));
    // Reserved 800, used 100: 700 come back, 900 are there.
    store
        .settle_buckets(&[settle("tenant-tok:a", 1000, 800, 100)], now)
        .await
        .unwrap();
    assert_eq!(store.take_buckets(&tok(900), now).await.unwrap(), Ok(()));
    assert_eq!(
        store.take_buckets(&tok(1), now).await.unwrap(),
        Err((0, Duration::from_millis(60)))
    );
    // Reserved 100, used 400: a debt of 300 units, which refills at one per 60 ms; one unit is
    // there after 301 × 60 ms.
    store
        .settle_buckets(&[settle("tenant-tok:a", 1000, 100, 400)], now)
        .await
        .unwrap();
    assert_eq!(
        store.take_buckets(&tok(1), now).await.unwrap(),
        Err((0, Duration::from_millis(301 * 60)))
    );
    assert_eq!(
        store.take_buckets(&tok(1), at(301 * 60)).await.unwrap(),
        Ok(())
    );
    // Giving back never fills a bucket past its capacity.
    store
        .settle_buckets(&[settle("tenant-tok:a", 1000, 1_000_000, 0)], at(301 * 60))
        .await
        .unwrap();
    assert_eq!(
        store.take_buckets(&tok(1000), at(301 * 60)).await.unwrap(),
        Ok(())
    );
    assert!(
        store
            .take_buckets(&tok(1), at(301 * 60))
            .await
            .unwrap()
            .is_err()
    );
    // A settlement of a bucket without a row starts it full.
    store
        .settle_buckets(&[settle("key-tok:k", 1000, 0, 250)], now)
        .await
        .unwrap();
    assert_eq!(
        store
            .take_buckets(&[take("key-tok:k", 1000, 750)], now)
            .await
            .unwrap(),
        Ok(())
    );
    assert!(
        store
            .take_buckets(&[take("key-tok:k", 1000, 1)], now)
            .await
            .unwrap()
            .is_err()
    );
}

async fn a_changed_capacity_rescales_the_stored_bucket(store: DynStore) {
    let now = at(0);
    assert_eq!(
        store
            .take_buckets(&[take("tenant-req:a", 100, 75)], now)
            .await
            .unwrap(),
        Ok(())
    );
    // The limit drops to 20: a quarter was left, a quarter of 20 is there.
    assert_eq!(
        store
            .take_buckets(&[take("tenant-req:a", 20, 5)], now)
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        store
            .take_buckets(&[take("tenant-req:a", 20, 1)], now)
            .await
            .unwrap(),
        Err((0, Duration::from_secs(3)))
    );
    // It rises to 1000: empty stays empty, but it refills at the new rate (one per 60 ms).
    assert_eq!(
        store
            .take_buckets(&[take("tenant-req:a", 1000, 1)], now)
            .await
            .unwrap(),
        Err((0, Duration::from_millis(60)))
    );
    assert_eq!(
        store
            .take_buckets(&[take("tenant-req:a", 1000, 10)], at(600))
            .await
            .unwrap(),
        Ok(())
    );
}

async fn only_full_idle_buckets_are_pruned(store: DynStore) {
    let hour = chrono::Duration::hours(1);
    // "full" was untouched, "drained" is refilling, "debt" owes more than an hour of refill,
    // "recent" was written at the cut (only buckets written before it are idle).
    assert_eq!(
        store
            .take_buckets(&[take("full", 10, 0), take("drained", 10, 10)], at(0))
            .await
            .unwrap(),
        Ok(())
    );
    store
        .settle_buckets(&[settle("debt", 10, 0, 10_000)], at(0))
        .await
        .unwrap();
    assert_eq!(
        store
            .take_buckets(&[take("recent", 10, 10)], at(3_600_000))
            .await
            .unwrap(),
        Ok(())
    );
    // Five seconds after the writes, only the bucket that was never drawn on is full.
    assert_eq!(
        store
            .prune_buckets(at(0) + hour, at(5_000), 100)
            .await
            .unwrap(),
        1
    );
    // Two hours on, "drained" is full too; "debt" is not, and "recent" is too recent.
    let later = at(0) + hour * 2;
    assert_eq!(
        store.prune_buckets(at(0) + hour, later, 100).await.unwrap(),
        1
    );
    assert_eq!(
        store.prune_buckets(at(0) + hour, later, 100).await.unwrap(),
        0
    );
    // The debt survived pruning: the bucket still refuses.
    assert!(
        store
            .take_buckets(&[take("debt", 10, 1)], later)
            .await
            .unwrap()
            .is_err()
    );
    // A pruned bucket comes back full, as it was.
    assert_eq!(
        store
            .take_buckets(&[take("drained", 10, 10)], later)
            .await
            .unwrap(),
        Ok(())
    );
}

async fn concurrent_takes_grant_exactly_the_capacity(store: DynStore) {
    let now = at(0);
    let calls = (0..100).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .take_buckets(
                    &[take("tenant-req:a", 10, 1), take("key-req:k", 1000, 1)],
                    now,
                )
                .await
                .unwrap()
        })
    });
    let mut granted = 0;
    for call in calls.collect::<Vec<_>>() {
        if call.await.unwrap().is_ok() {
            granted += 1;
        }
    }
    assert_eq!(granted, 10);
    // The key's bucket gave exactly once per granted call.
    assert_eq!(
        store
            .take_buckets(&[take("key-req:k", 1000, 990)], now)
            .await
            .unwrap(),
        Ok(())
    );
    assert!(
        store
            .take_buckets(&[take("key-req:k", 1000, 1)], now)
            .await
            .unwrap()
            .is_err()
    );
}
