//! Rate-limit buckets on SQLite. Each call is one `BEGIN IMMEDIATE` transaction on the single
//! writer: it reads the buckets, lets `flotilla_core::quota` decide, and writes them back with no
//! other writer in between. (The gateway keeps its buckets in memory on SQLite; this is the same
//! contract as PostgreSQL's, for the behaviour suite and for tools.)

use super::SqliteStore;
use crate::rows::{micros, truncate};
use crate::{BucketSettle, BucketTake, StoreResult, bucket_from_row};
use flotilla_core::Timestamp;
use flotilla_core::quota::{Bucket, take_all};
use sqlx::SqliteConnection;
use std::time::Duration;

/// A stored bucket's columns.
type Row = (i64, i64, String, i64);

async fn load(conn: &mut SqliteConnection, subject: &str) -> StoreResult<Option<Bucket>> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT capacity, period_ms, level, updated_at FROM rate_buckets WHERE subject = ?1",
    )
    .bind(subject)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|(capacity, period_ms, level, updated_at)| {
        bucket_from_row(capacity, period_ms, &level, updated_at)
    })
    .transpose()
}

async fn save(conn: &mut SqliteConnection, subject: &str, bucket: &Bucket) -> StoreResult<()> {
    let s = bucket.state();
    sqlx::query(
        "INSERT INTO rate_buckets (subject, capacity, period_ms, level, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (subject) DO UPDATE SET capacity = excluded.capacity, \
         period_ms = excluded.period_ms, level = excluded.level, updated_at = excluded.updated_at",
    )
    .bind(subject)
    .bind(s.capacity)
    .bind(s.period_ms)
    .bind(s.level.to_string())
    .bind(micros(s.updated))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn take(
    store: &SqliteStore,
    takes: &[BucketTake],
    now: Timestamp,
) -> StoreResult<Result<(), (usize, Duration)>> {
    if takes.is_empty() {
        return Ok(Ok(()));
    }
    // Decide at the instant the rows will hold, so that what is restored is what was decided.
    let now = truncate(now)?;
    let mut tx = store.begin().await?;
    let mut buckets = Vec::with_capacity(takes.len());
    for t in takes {
        let stored = load(&mut tx, &t.subject).await?;
        buckets.push((Bucket::resume(stored, t.capacity, t.period, now), t.n));
    }
    if let Err(refused) = take_all(&mut buckets, now) {
        tx.rollback().await?;
        return Ok(Err(refused));
    }
    for (t, (bucket, _)) in takes.iter().zip(&buckets) {
        save(&mut tx, &t.subject, bucket).await?;
    }
    tx.commit().await?;
    Ok(Ok(()))
}

pub(super) async fn settle(
    store: &SqliteStore,
    settles: &[BucketSettle],
    now: Timestamp,
) -> StoreResult<()> {
    if settles.is_empty() {
        return Ok(());
    }
    let now = truncate(now)?;
    let mut tx = store.begin().await?;
    for s in settles {
        let stored = load(&mut tx, &s.subject).await?;
        let mut bucket = Bucket::resume(stored, s.capacity, s.period, now);
        bucket.settle(s.reserved, s.actual, now);
        save(&mut tx, &s.subject, &bucket).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn prune(
    store: &SqliteStore,
    idle_before: Timestamp,
    now: Timestamp,
    limit: u32,
) -> StoreResult<u64> {
    let mut tx = store.begin().await?;
    let idle: Vec<(String, i64, i64, String, i64)> = sqlx::query_as(
        "SELECT subject, capacity, period_ms, level, updated_at FROM rate_buckets \
         WHERE updated_at < ?1 ORDER BY updated_at LIMIT ?2",
    )
    .bind(micros(idle_before))
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await?;
    let mut deleted = 0;
    for (subject, capacity, period_ms, level, updated_at) in idle {
        if bucket_from_row(capacity, period_ms, &level, updated_at)?.is_full(now) {
            deleted += sqlx::query("DELETE FROM rate_buckets WHERE subject = ?1")
                .bind(subject)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
    }
    tx.commit().await?;
    Ok(deleted)
}
