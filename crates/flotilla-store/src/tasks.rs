//! Tasks: the listings and counts both backends run alike, in [`task_store!`] (see `crate::sql`).
//! Inserts, claims, finishes, cancellations and lease handling lock and batch differently per
//! backend and come in as `$dialect`.

pub(crate) const COUNTS: &str = "SELECT status, COUNT(*) FROM tasks GROUP BY status";

/// Attempts of task `$1` lost so far (their control plane stopped).
pub(crate) const LOST_ATTEMPTS: &str =
    "SELECT COUNT(*) FROM task_attempts WHERE task_id = $1 AND outcome = 'lost'";

/// Running tasks whose lease expired before `$1`, on SQLite (whose single writer keeps others
/// out of the transaction already).
pub(crate) const EXPIRED_SQLITE: &str = "SELECT id, attempt, agent_type, updated_at FROM tasks \
     WHERE status = 'running' AND lease_expires_at < $1 ORDER BY id";
/// The same on PostgreSQL, where a task being finished or requeued by another replica right now
/// is left to it (SKIP LOCKED).
pub(crate) const EXPIRED_PG: &str = "SELECT id, attempt, agent_type, updated_at FROM tasks \
     WHERE status = 'running' AND lease_expires_at < $1 ORDER BY id FOR UPDATE SKIP LOCKED";

/// The `lost` attempt `$2` of task `$1`, claimed at `$3`, ended at `$4` with error `$5`.
pub(crate) const INSERT_LOST: &str = "INSERT INTO task_attempts \
     (task_id, number, agent_id, started_at, finished_at, outcome, error) \
     VALUES ($1, $2, NULL, $3, $4, 'lost', $5) ON CONFLICT DO NOTHING";

/// An expired lease's task (`$1`, attempt `$2`) back to the queue at `$3`, with error `$4`.
pub(crate) const REQUEUE_LOST: &str = "UPDATE tasks SET status = 'queued', not_before = $3, \
     updated_at = $3, error = $4, lease_owner = NULL, lease_expires_at = NULL \
     WHERE id = $1 AND status = 'running' AND attempt = $2";

/// An expired lease's task (`$1`, attempt `$2`) failed at `$3` for losing too many attempts.
pub(crate) const FAIL_LOST: &str = "UPDATE tasks SET status = 'failed', finished_at = $3, \
     updated_at = $3, error = $4, lease_owner = NULL, lease_expires_at = NULL \
     WHERE id = $1 AND status = 'running' AND attempt = $2";

/// The error of an expired lease: `attempt` was lost, and with it `lost` attempts in all;
/// whether the task fails (`max_lost` reached).
pub(crate) fn lost_attempt(attempt: i32, lost: i64, max_lost: u32) -> (String, bool) {
    if lost >= i64::from(max_lost) {
        let error = format!(
            "lost {lost} attempts: the control plane running each of them stopped, the last \
             during attempt {attempt} (scheduler.max_lost_attempts = {max_lost})"
        );
        (error, true)
    } else {
        (crate::rows::lease_expired_error(attempt), false)
    }
}

/// [`crate::TaskStore`] for a backend `$store` of database `$db`, whose task columns are
/// `task_columns!()` at the call site, which checks a leadership term with `$fence` and finds
/// expired leases with `$expired`.
macro_rules! task_store {
    ($store:ty, $db:ty, $fence:expr, $expired:expr, { $($dialect:tt)* }) => {
        #[async_trait::async_trait]
        impl crate::TaskStore for $store {
            async fn list_tasks(
                &self,
                filter: &crate::TaskFilter,
            ) -> crate::StoreResult<Vec<flotilla_core::task::Task>> {
                let mut query = sqlx::QueryBuilder::<$db>::new(concat!(
                    "SELECT ",
                    task_columns!(),
                    " FROM tasks WHERE 1 = 1"
                ));
                if let Some(tenant) = filter.tenant_id {
                    query.push(" AND tenant_id = ").push_bind(tenant.0);
                }
                if let Some(status) = filter.status {
                    query.push(" AND status = ").push_bind(status.as_str());
                }
                if let Some(agent_type) = &filter.agent_type {
                    query.push(" AND agent_type = ").push_bind(agent_type.as_str());
                }
                if let Some(before) = filter.before {
                    query.push(" AND id < ").push_bind(before.0);
                }
                query.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(filter.limit));
                let rows = query
                    .build_query_as::<crate::rows::TaskRow>()
                    .fetch_all(self.reads())
                    .await?;
                rows.into_iter().map(crate::rows::TaskRow::into_task).collect()
            }

            async fn task_counts_by_status(
                &self,
            ) -> crate::StoreResult<Vec<(flotilla_core::task::TaskStatus, u64)>> {
                let rows: Vec<(String, i64)> = sqlx::query_as(crate::tasks::COUNTS)
                    .fetch_all(self.reads())
                    .await?;
                crate::rows::status_counts(rows)
            }

            async fn queued_by_type(
                &self,
                tenant: Option<flotilla_core::id::TenantId>,
            ) -> crate::StoreResult<std::collections::BTreeMap<String, u64>> {
                let mut query = sqlx::QueryBuilder::<$db>::new(
                    "SELECT agent_type, COUNT(*) FROM tasks WHERE status = 'queued'",
                );
                if let Some(tenant) = tenant {
                    query.push(" AND tenant_id = ").push_bind(tenant.0);
                }
                query.push(" GROUP BY agent_type");
                let rows: Vec<(String, i64)> = query
                    .build_query_as()
                    .fetch_all(self.reads())
                    .await?;
                rows.into_iter()
                    .map(|(agent_type, n)| Ok((agent_type, crate::rows::count("queued count", n)?)))
                    .collect()
            }

            async fn queued_tenants(
                &self,
                agent_type: &str,
                now: flotilla_core::Timestamp,
                limit: u32,
            ) -> crate::StoreResult<Vec<flotilla_core::id::TenantId>> {
                // A loose index scan: from one tenant with queued work to the next through
                // `tasks_queue`, then whether it has a due task of the type.
                let mut query = sqlx::QueryBuilder::<$db>::new(
                    "WITH RECURSIVE t (tenant_id) AS ( \
                     SELECT (SELECT tenant_id FROM tasks WHERE status = 'queued' \
                     ORDER BY tenant_id LIMIT 1) \
                     UNION ALL \
                     SELECT (SELECT q.tenant_id FROM tasks q WHERE q.status = 'queued' \
                     AND q.tenant_id > t.tenant_id ORDER BY q.tenant_id LIMIT 1) \
                     FROM t WHERE t.tenant_id IS NOT NULL) \
                     SELECT t.tenant_id FROM t WHERE t.tenant_id IS NOT NULL \
                     AND EXISTS (SELECT 1 FROM tasks d WHERE d.status = 'queued' \
                     AND d.tenant_id = t.tenant_id AND d.agent_type = ",
                );
                query
                    .push_bind(agent_type)
                    .push(" AND d.not_before <= ")
                    .push_bind(crate::rows::micros(now))
                    .push(") LIMIT ")
                    .push_bind(i64::from(limit));
                let ids: Vec<uuid::Uuid> = query
                    .build_query_scalar()
                    .fetch_all(self.reads())
                    .await?;
                Ok(ids.into_iter().map(flotilla_core::id::TenantId).collect())
            }

            async fn count_queued(
                &self,
                tenant: flotilla_core::id::TenantId,
                cap: u64,
            ) -> crate::StoreResult<u64> {
                let mut query = sqlx::QueryBuilder::<$db>::new(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE status = 'queued' \
                     AND tenant_id = ",
                );
                query
                    .push_bind(tenant.0)
                    .push(" LIMIT ")
                    .push_bind(i64::try_from(cap).unwrap_or(i64::MAX))
                    .push(") AS q");
                let n: i64 = query.build_query_scalar().fetch_one(self.reads()).await?;
                crate::rows::count("queued count", n)
            }

            async fn requeue_expired(
                &self,
                now: flotilla_core::Timestamp,
                fence: Option<&crate::Fence>,
                max_lost: u32,
            ) -> crate::StoreResult<Vec<crate::Requeued>> {
                let now_us = crate::rows::micros(now);
                let mut tx = self.begin().await?;
                if let Some(fence) = fence {
                    let holds: Option<i64> = sqlx::query_scalar($fence)
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
                let expired: Vec<(uuid::Uuid, i32, String, i64)> =
                    sqlx::query_as($expired).bind(now_us).fetch_all(&mut *tx).await?;
                let mut out = Vec::with_capacity(expired.len());
                for (id, attempt, agent_type, claimed_at) in expired {
                    let lost: i64 = sqlx::query_scalar(crate::tasks::LOST_ATTEMPTS)
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                    let (error, failed) = crate::tasks::lost_attempt(attempt, lost + 1, max_lost);
                    let update = if failed {
                        crate::tasks::FAIL_LOST
                    } else {
                        crate::tasks::REQUEUE_LOST
                    };
                    sqlx::query(update)
                        .bind(id)
                        .bind(attempt)
                        .bind(now_us)
                        .bind(&error)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(crate::tasks::INSERT_LOST)
                        .bind(id)
                        .bind(attempt)
                        .bind(claimed_at)
                        .bind(now_us)
                        .bind(&error)
                        .execute(&mut *tx)
                        .await?;
                    out.push(crate::Requeued {
                        task_id: flotilla_core::id::TaskId(id),
                        attempt,
                        agent_type,
                        failed,
                    });
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn fail_overdue(
                &self,
                overdue: &crate::Overdue<'_>,
                now: flotilla_core::Timestamp,
            ) -> crate::StoreResult<Vec<(flotilla_core::id::TaskId, String)>> {
                let now_us = crate::rows::micros(now);
                let mut query = sqlx::QueryBuilder::<$db>::new(
                    "UPDATE tasks SET status = 'failed', finished_at = ",
                );
                query
                    .push_bind(now_us)
                    .push(", updated_at = ")
                    .push_bind(now_us)
                    .push(", error = ")
                    .push_bind(overdue.error)
                    .push(
                        " WHERE status = 'queued' AND id IN (SELECT id FROM tasks \
                         WHERE status = 'queued' AND not_before < ",
                    )
                    .push_bind(crate::rows::micros(overdue.due_before));
                if let Some(agent_type) = overdue.agent_type {
                    query.push(" AND agent_type = ").push_bind(agent_type);
                }
                if !overdue.except.is_empty() {
                    query.push(" AND agent_type NOT IN (");
                    let mut names = query.separated(", ");
                    for name in overdue.except {
                        names.push_bind(name.as_str());
                    }
                    query.push(")");
                }
                query
                    .push(" ORDER BY not_before LIMIT ")
                    .push_bind(i64::from(overdue.limit))
                    .push(") RETURNING id, agent_type");
                let mut w = self.writer().await?;
                let failed: Vec<(uuid::Uuid, String)> =
                    query.build_query_as().fetch_all(w.conn()).await?;
                w.commit().await?;
                Ok(failed
                    .into_iter()
                    .map(|(id, agent_type)| (flotilla_core::id::TaskId(id), agent_type))
                    .collect())
            }

            $($dialect)*
        }
    };
}
pub(crate) use task_store;
