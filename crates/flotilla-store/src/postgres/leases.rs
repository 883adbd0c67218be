//! Expired leases on PostgreSQL: each task goes back to the queue with a `lost` attempt, or
//! fails once it has lost `max_lost` attempts.

use super::PostgresStore;
use crate::rows::micros;
use crate::tasks::{FAIL_LOST, LOST_ATTEMPTS, REQUEUE_LOST, lost_attempt};
use crate::{Fence, Requeued, StoreResult};
use flotilla_core::Timestamp;
use flotilla_core::id::TaskId;
use uuid::Uuid;

pub(super) async fn requeue_expired(
    store: &PostgresStore,
    now: Timestamp,
    fence: Option<&Fence>,
    max_lost: u32,
) -> StoreResult<Vec<Requeued>> {
    let now_us = micros(now);
    let mut tx = store.pool.begin().await?;
    if let Some(fence) = fence {
        let holds: Option<i64> = sqlx::query_scalar(crate::coordination::FENCE_PG)
            .bind(&fence.lease)
            .bind(&fence.holder)
            .bind(fence.generation)
            .bind(now_us)
            .fetch_optional(&mut *tx)
            .await?;
        if holds.is_none() {
            return Ok(Vec::new());
        }
    }
    // SKIP LOCKED: a task being finished or requeued by another replica right now is left to it.
    let expired: Vec<(Uuid, i32, String, i64)> = sqlx::query_as(
        "SELECT id, attempt, agent_type, updated_at FROM tasks \
         WHERE status = 'running' AND lease_expires_at < $1 ORDER BY id FOR UPDATE SKIP LOCKED",
    )
    .bind(now_us)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Vec::with_capacity(expired.len());
    for (id, attempt, agent_type, claimed_at) in expired {
        let lost: i64 = sqlx::query_scalar(LOST_ATTEMPTS)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let (error, failed) = lost_attempt(attempt, lost + 1, max_lost);
        sqlx::query(if failed { FAIL_LOST } else { REQUEUE_LOST })
            .bind(id)
            .bind(attempt)
            .bind(now_us)
            .bind(&error)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO task_attempts \
             (task_id, number, agent_id, started_at, finished_at, outcome, error) \
             VALUES ($1, $2, NULL, $3, $4, 'lost', $5) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(attempt)
        .bind(claimed_at)
        .bind(now_us)
        .bind(&error)
        .execute(&mut *tx)
        .await?;
        out.push(Requeued {
            task_id: TaskId(id),
            attempt,
            agent_type,
            failed,
        });
    }
    tx.commit().await?;
    Ok(out)
}
