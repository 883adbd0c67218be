//! Rate-limit buckets on PostgreSQL, shared by every replica (docs/design.md §7).
//!
//! A take or settlement runs in one transaction: it locks each bucket's row with an upsert
//! (`INSERT ... ON CONFLICT DO UPDATE ... RETURNING`, which creates a missing row full, or locks
//! and returns the stored one) one subject at a time in subject order, so two calls never wait
//! for each other in a cycle; lets `flotilla_core::quota` decide on the restored buckets; and
//! writes them back in one statement. A refused take rolls back, which also removes rows it
//! created. Under READ COMMITTED the upsert returns the newest committed row, so a call always
//! decides on what the previous holder of the lock wrote.

use super::PostgresStore;
use crate::rows::{micros, truncate};
use crate::{BucketSettle, BucketTake, StoreResult, bucket_from_row};
use flotilla_core::Timestamp;
use flotilla_core::quota::{Bucket, take_all};
use sqlx::PgConnection;
use std::time::Duration;

/// Indices of `subjects` in the order their rows are locked.
fn lock_order<'a>(subjects: impl Iterator<Item = &'a str>) -> Vec<usize> {
    let subjects: Vec<&str> = subjects.collect();
    let mut order: Vec<usize> = (0..subjects.len()).collect();
    order.sort_by_key(|&i| subjects.get(i).copied());
    order
}

/// Locks a bucket's row until the transaction ends, creating it as `fresh` if missing, and
/// returns the stored bucket.
async fn lock(conn: &mut PgConnection, subject: &str, fresh: &Bucket) -> StoreResult<Bucket> {
    let s = fresh.state();
    // The no-op update takes the row lock (FOR NO KEY UPDATE) and makes RETURNING give the row.
    let (capacity, period_ms, level, updated_at): (i64, i64, String, i64) = sqlx::query_as(
        "INSERT INTO rate_buckets (subject, capacity, period_ms, level, updated_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (subject) DO UPDATE SET updated_at = rate_buckets.updated_at \
         RETURNING capacity, period_ms, level, updated_at",
    )
    .bind(subject)
    .bind(s.capacity)
    .bind(s.period_ms)
    .bind(s.level.to_string())
    .bind(micros(s.updated))
    .fetch_one(&mut *conn)
    .await?;
    bucket_from_row(capacity, period_ms, &level, updated_at)
}

/// Writes locked buckets back.
async fn save(conn: &mut PgConnection, buckets: &[(&str, Bucket)]) -> StoreResult<()> {
    let states: Vec<_> = buckets.iter().map(|(_, b)| b.state()).collect();
    sqlx::query(
        "UPDATE rate_buckets AS b SET capacity = u.capacity, period_ms = u.period_ms, \
         level = u.level, updated_at = u.updated_at \
         FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int8[]) \
         AS u(subject, capacity, period_ms, level, updated_at) \
         WHERE b.subject = u.subject",
    )
    .bind(buckets.iter().map(|(s, _)| *s).collect::<Vec<_>>())
    .bind(states.iter().map(|s| s.capacity).collect::<Vec<_>>())
    .bind(states.iter().map(|s| s.period_ms).collect::<Vec<_>>())
    .bind(
        states
            .iter()
            .map(|s| s.level.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(states.iter().map(|s| micros(s.updated)).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn take(
    store: &PostgresStore,
    takes: &[BucketTake],
    now: Timestamp,
) -> StoreResult<Result<(), (usize, Duration)>> {
    if takes.is_empty() {
        return Ok(Ok(()));
    }
    // Decide at the instant the rows will hold, so that what is restored is what was decided.
    let now = truncate(now)?;
    let mut tx = store.pool.begin().await?;
    let mut stored: Vec<Option<Bucket>> = vec![None; takes.len()];
    for i in lock_order(takes.iter().map(|t| t.subject.as_str())) {
        let (Some(t), Some(slot)) = (takes.get(i), stored.get_mut(i)) else {
            continue;
        };
        let fresh = Bucket::new(t.capacity, t.period, now);
        *slot = Some(lock(&mut tx, &t.subject, &fresh).await?);
    }
    let mut buckets: Vec<(Bucket, u64)> = takes
        .iter()
        .zip(stored)
        .map(|(t, b)| (Bucket::resume(b, t.capacity, t.period, now), t.n))
        .collect();
    if let Err(refused) = take_all(&mut buckets, now) {
        tx.rollback().await?;
        return Ok(Err(refused));
    }
    let written: Vec<(&str, Bucket)> = takes
        .iter()
        .zip(&buckets)
        .map(|(t, (b, _))| (t.subject.as_str(), *b))
        .collect();
    save(&mut tx, &written).await?;
    tx.commit().await?;
    Ok(Ok(()))
}

pub(super) async fn settle(
    store: &PostgresStore,
    settles: &[BucketSettle],
    now: Timestamp,
) -> StoreResult<()> {
    if settles.is_empty() {
        return Ok(());
    }
    let now = truncate(now)?;
    let mut tx = store.pool.begin().await?;
    let mut written: Vec<(&str, Bucket)> = Vec::with_capacity(settles.len());
    for i in lock_order(settles.iter().map(|s| s.subject.as_str())) {
        let Some(s) = settles.get(i) else {
            continue;
        };
        let fresh = Bucket::new(s.capacity, s.period, now);
        let stored = lock(&mut tx, &s.subject, &fresh).await?;
        let mut bucket = Bucket::resume(Some(stored), s.capacity, s.period, now);
        bucket.settle(s.reserved, s.actual, now);
        written.push((s.subject.as_str(), bucket));
    }
    save(&mut tx, &written).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn prune(
    store: &PostgresStore,
    idle_before: Timestamp,
    now: Timestamp,
    limit: u32,
) -> StoreResult<u64> {
    let idle: Vec<(String, i64, i64, String, i64)> = sqlx::query_as(
        "SELECT subject, capacity, period_ms, level, updated_at FROM rate_buckets \
         WHERE updated_at < $1 ORDER BY updated_at LIMIT $2",
    )
    .bind(micros(idle_before))
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await?;
    let mut full: Vec<(String, i64, String)> = Vec::new();
    for (subject, capacity, period_ms, level, updated_at) in idle {
        if bucket_from_row(capacity, period_ms, &level, updated_at)?.is_full(now) {
            full.push((subject, updated_at, level));
        }
    }
    if full.is_empty() {
        return Ok(0);
    }
    // Without a lock: a row is deleted only if it is still exactly as read (another replica
    // that took from it since has written a new updated_at), so a full bucket is all that goes.
    let deleted = sqlx::query(
        "DELETE FROM rate_buckets AS b \
         USING UNNEST($1::text[], $2::int8[], $3::text[]) AS u(subject, updated_at, level) \
         WHERE b.subject = u.subject AND b.updated_at = u.updated_at AND b.level = u.level",
    )
    .bind(full.iter().map(|(s, _, _)| s.as_str()).collect::<Vec<_>>())
    .bind(full.iter().map(|(_, u, _)| *u).collect::<Vec<_>>())
    .bind(full.iter().map(|(_, _, l)| l.as_str()).collect::<Vec<_>>())
    .execute(&store.pool)
    .await?
    .rows_affected();
    Ok(deleted)
}
