//! Expired leases on SQLite: each task goes back to the queue with a `lost` attempt, or fails
//! once it has lost `max_lost` attempts.

use super::{INSERT_ATTEMPT, SqliteStore};
use crate::rows::micros;
use crate::tasks::{FAIL_LOST, LOST_ATTEMPTS, REQUEUE_LOST, lost_attempt};
use crate::{Fence, Requeued, StoreResult};
use flotilla_core::Timestamp;
use flotilla_core::id::TaskId;
use uuid::Uuid;

pub(super) async fn requeue_expired(
    store: &SqliteStore,
    now: Timestamp,
    fence: Option<&Fence>,
    max_lost: u32,
) -> StoreResult<Vec<Requeued>> {
    let now_us = micros(now);
    let mut tx = store.begin().await?;
    if let Some(fence) = fence {
        let holds: Option<i64> = sqlx::query_scalar(crate::coordination::FENCE_SQLITE)
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
    let expired: Vec<(Uuid, i32, String, i64)> = sqlx::query_as(
        "SELECT id, attempt, agent_type, updated_at FROM tasks \
         WHERE status = 'running' AND lease_expires_at < ?1 ORDER BY id",
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
        sqlx::query(INSERT_ATTEMPT)
            .bind(id)
            .bind(attempt)
            .bind(None::<Uuid>)
            .bind(claimed_at)
            .bind(now_us)
            .bind("lost")
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
