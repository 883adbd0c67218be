//! The SQLite store: one file, WAL, `synchronous=FULL`.
//!
//! SQLite has a single writer, so every write goes through a pool of exactly one connection and
//! each trait call is one `BEGIN IMMEDIATE` transaction: the server batches inserts, claims and
//! finishes into one call, and the one fsync of its commit covers the whole batch (group commit).
//! Reads use a separate pool of read-only connections, which WAL lets run beside the writer.

use crate::coordination::FENCE_SQLITE;
use crate::rows::{
    AttemptRow, EndUpdate, TaskRow, attach_attempts, created_task, finish_update, micros,
    migrations_applied, place_round, rounds,
};
use crate::tasks::EXPIRED_SQLITE;
use crate::{Cancelled, Inserted, StoreError, StoreResult};
use async_trait::async_trait;
use flotilla_core::Timestamp;
use flotilla_core::event::NewEvent;
use flotilla_core::id::{TaskId, TenantId};
use flotilla_core::task::{AttemptEnd, Lease, NewTask, Task};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

mod buckets;
mod events;
mod usage;

crate::access::access_store!(SqliteStore, Sqlite);
crate::secrets::secret_store!(SqliteStore);

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The columns of a [`TaskRow`].
macro_rules! task_columns {
    () => {
        "id, tenant_id, agent_type, input, priority, complexity, idempotency_key, timeout_ms, \
         max_attempts, status, attempt, output, error, usage, agent_id, trace_id, created_at, \
         updated_at, not_before, started_at, finished_at"
    };
}

const ATTEMPTS_OF_TASK: &str = "SELECT task_id, number, agent_id, started_at, finished_at, outcome, error \
     FROM task_attempts WHERE task_id = ?1 ORDER BY number";

/// The SQLite implementation of [`Store`].
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Exactly one connection: every write transaction.
    writer: SqlitePool,
    /// Read-only connections.
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating the file and its directory if missing) the database at `path`, with one
    /// writer connection and `readers` read-only connections. Does not migrate.
    pub async fn open(path: &Path, readers: u32) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::from(sqlx::Error::Io(e)))?;
        }
        let base = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let writer_options = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(writer_options)
            .await?;
        // The writer has created the file and switched it to WAL, which readers need.
        let reader = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .connect_with(base.read_only(true))
            .await?;
        Ok(Self { writer, reader })
    }

    /// A write transaction on the single writer (see [`crate::sql`]).
    async fn begin(&self) -> StoreResult<sqlx::Transaction<'static, Sqlite>> {
        // IMMEDIATE takes the write lock up front, so another process's writer makes us wait
        // (busy_timeout) rather than fail on a lock upgrade.
        match self.writer.begin_with("BEGIN IMMEDIATE").await {
            // A COMMIT that failed because the disk was full: SQLite rolled the transaction back
            // itself, so sqlx's ROLLBACK failed and it still counts a transaction open on the
            // writer, refusing every later BEGIN. The writer is replaced rather than left stuck
            // (the chaos suite's full disk found it).
            Err(sqlx::Error::InvalidSavePointStatement) => {
                tracing::warn!(
                    "The SQLite writer was left inside a failed transaction; opening a new one"
                );
                let stuck = self.writer.acquire().await?;
                let _ = stuck.close().await;
                Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
            }
            begun => Ok(begun?),
        }
    }

    /// Where a single-statement write runs: a transaction, like every write here.
    async fn writer(&self) -> StoreResult<Write> {
        Ok(Write(self.begin().await?))
    }

    /// Serialises appends to the audit chain: the single writer does already.
    async fn lock_audit(_: &mut SqliteConnection) -> StoreResult<()> {
        Ok(())
    }

    /// Where reads run: the read-only pool.
    fn reads(&self) -> &SqlitePool {
        &self.reader
    }
}

/// A single-statement write (see [`crate::sql`]): a transaction on the single writer.
struct Write(sqlx::Transaction<'static, Sqlite>);

impl Write {
    fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.0
    }

    async fn commit(self) -> StoreResult<()> {
        Ok(self.0.commit().await?)
    }
}

async fn load_attempts(conn: &mut SqliteConnection, task: &mut Task) -> StoreResult<()> {
    let rows = sqlx::query_as::<_, AttemptRow>(ATTEMPTS_OF_TASK)
        .bind(task.id.0)
        .fetch_all(conn)
        .await?;
    attach_attempts(std::slice::from_mut(task), rows)
}

/// Most rows in one multi-row statement (15 parameters each, well under SQLite's 32766).
const MAX_CHUNK: usize = 256;

/// Splits `items` into chunks whose lengths are powers of two (at most [`MAX_CHUNK`]), largest
/// first, so that multi-row statements come in few shapes and their prepared forms are reused.
fn pow2_chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = rest.len().min(MAX_CHUNK);
        let size = if len.is_power_of_two() {
            len
        } else {
            len.next_power_of_two() / 2
        };
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

async fn fetch_task(
    conn: &mut SqliteConnection,
    tenant: Option<TenantId>,
    id: TaskId,
) -> StoreResult<Option<Task>> {
    let row = sqlx::query_as::<_, TaskRow>(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE id = ?1 AND (?2 IS NULL OR tenant_id = ?2)"
    ))
    .bind(id.0)
    .bind(tenant.map(|t| t.0))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut task = row.into_task()?;
    load_attempts(conn, &mut task).await?;
    Ok(Some(task))
}

#[async_trait]
impl crate::LifecycleStore for SqliteStore {
    fn pool_stats(&self) -> crate::PoolStats {
        let stats = |pool: &sqlx::SqlitePool| crate::PoolStats {
            open: pool.size(),
            idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
            max: pool.options().get_max_connections(),
        };
        let (w, r) = (stats(&self.writer), stats(&self.reader));
        crate::PoolStats {
            open: w.open + r.open,
            idle: w.idle + r.idle,
            max: w.max + r.max,
        }
    }

    fn topology(&self) -> crate::Topology {
        crate::Topology::Embedded
    }

    async fn migrate(&self) -> StoreResult<()> {
        Ok(MIGRATOR.run(&self.writer).await?)
    }

    async fn ready(&self) -> StoreResult<bool> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        let table: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.reader)
        .await?;
        if table.is_none() {
            return Ok(false);
        }
        let applied: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.reader)
                .await?;
        Ok(migrations_applied(&MIGRATOR, &applied))
    }
}

crate::tasks::task_store!(SqliteStore, Sqlite, FENCE_SQLITE, EXPIRED_SQLITE, {
    async fn insert_tasks(&self, tasks: &[NewTask]) -> StoreResult<Vec<Inserted>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let leases: HashMap<Uuid, &Lease> = tasks
            .iter()
            .filter_map(|t| Some((t.id.0, t.claim.as_ref()?)))
            .collect();
        let tasks = tasks
            .iter()
            .map(created_task)
            .collect::<StoreResult<Vec<_>>>()?;
        let mut tx = self.begin().await?;
        // Multi-row inserts, in order; a row whose idempotency key exists is skipped.
        let mut created = HashSet::with_capacity(tasks.len());
        for chunk in pow2_chunks(&tasks) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO tasks (id, tenant_id, agent_type, input, priority, complexity, \
                 idempotency_key, timeout_ms, max_attempts, status, attempt, trace_id, created_at, \
                 updated_at, not_before, started_at, lease_owner, lease_expires_at) ",
            );
            query.push_values(chunk, |mut row, task| {
                let created_at = micros(task.created_at);
                let lease = leases.get(&task.id.0);
                row.push_bind(task.id.0)
                    .push_bind(task.tenant_id.0)
                    .push_bind(task.agent_type.as_str())
                    .push_bind(Json(&task.input))
                    .push_bind(task.priority)
                    .push_bind(task.complexity)
                    .push_bind(task.idempotency_key.as_deref())
                    .push_bind(task.timeout_ms)
                    .push_bind(task.max_attempts)
                    .push_bind(task.status.as_str())
                    .push_bind(task.attempt)
                    .push_bind(task.trace_id.as_deref())
                    .push_bind(created_at)
                    .push_bind(created_at)
                    .push_bind(created_at)
                    .push_bind(task.started_at.map(micros))
                    .push_bind(lease.map(|l| l.owner.as_str()))
                    .push_bind(lease.map(|l| micros(l.expires_at)));
            });
            query.push(" ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING id");
            let ids: Vec<Uuid> = query.build_query_scalar().fetch_all(&mut *tx).await?;
            created.extend(ids);
        }
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            if created.contains(&task.id.0) {
                out.push(Inserted::Created(task));
                continue;
            }
            let row = sqlx::query_as::<_, TaskRow>(concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE tenant_id = ?1 AND idempotency_key = ?2"
            ))
            .bind(task.tenant_id.0)
            .bind(task.idempotency_key.as_deref())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("task {} conflicted with no stored task", task.id))
            })?;
            let mut existing = row.into_task()?;
            load_attempts(&mut tx, &mut existing).await?;
            out.push(Inserted::Existing(existing));
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn get_task(&self, tenant: Option<TenantId>, id: TaskId) -> StoreResult<Option<Task>> {
        // One read transaction, so that the task and its attempts come from the same snapshot.
        let mut tx = self.reader.begin().await?;
        let task = fetch_task(&mut tx, tenant, id).await?;
        tx.commit().await?;
        Ok(task)
    }

    async fn cancel_task(
        &self,
        tenant: Option<TenantId>,
        id: TaskId,
        now: Timestamp,
    ) -> StoreResult<Cancelled> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query_as::<_, TaskRow>(concat!(
            "UPDATE tasks SET status = 'cancelled', finished_at = ?3, updated_at = ?3, lease_owner = NULL, \
             lease_expires_at = NULL \
             WHERE id = ?1 AND (?2 IS NULL OR tenant_id = ?2) AND status IN ('queued', 'running') \
             RETURNING ",
            task_columns!()
        ))
        .bind(id.0)
        .bind(tenant.map(|t| t.0))
        .bind(micros(now))
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match updated {
            Some(row) => {
                let mut task = row.into_task()?;
                load_attempts(&mut tx, &mut task).await?;
                Cancelled::Done(task)
            }
            None => match fetch_task(&mut tx, tenant, id).await? {
                Some(task) => Cancelled::AlreadyFinished(task),
                None => Cancelled::NotFound,
            },
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn claim_tasks(
        &self,
        agent_type: &str,
        tenant: TenantId,
        limit: u32,
        owner: &str,
        lease_expires_at: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Vec<Task>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let rows = sqlx::query_as::<_, TaskRow>(concat!(
            "UPDATE tasks SET status = 'running', attempt = attempt + 1, started_at = COALESCE(started_at, ?1), \
             updated_at = ?1, lease_owner = ?2, lease_expires_at = ?3 \
             WHERE id IN (SELECT id FROM tasks WHERE status = 'queued' AND tenant_id = ?6 \
             AND agent_type = ?4 AND not_before <= ?1 ORDER BY priority DESC, id ASC LIMIT ?5) \
             RETURNING ",
            task_columns!()
        ))
        .bind(micros(now))
        .bind(owner)
        .bind(micros(lease_expires_at))
        .bind(agent_type)
        .bind(i64::from(limit))
        .bind(tenant.0)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut tasks = rows
            .into_iter()
            .map(TaskRow::into_task)
            .collect::<StoreResult<Vec<_>>>()?;
        crate::rows::sort_claimed(&mut tasks);
        Ok(tasks)
    }

    async fn finish_attempts(&self, ends: &[AttemptEnd]) -> StoreResult<Vec<Option<Task>>> {
        if ends.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let mut out: Vec<Option<Task>> = vec![None; ends.len()];
        for round in rounds(ends) {
            for chunk in pow2_chunks(&round) {
                let mut query = QueryBuilder::<Sqlite>::new(
                    "WITH e (e_task, e_attempt, e_kind, e_status, e_output, e_usage, e_error, \
                     e_not_before, e_finished_at, e_agent) AS (",
                );
                query.push_values(chunk.iter().filter_map(|&i| ends.get(i)), |mut row, end| {
                    let update = EndUpdate::of(end);
                    row.push_bind(end.task_id.0)
                        .push_bind(end.attempt)
                        .push_bind(update.kind)
                        .push_bind(update.status)
                        .push_bind(update.output.map(Json))
                        .push_bind(update.usage.map(Json))
                        .push_bind(update.error)
                        .push_bind(update.not_before)
                        .push_bind(micros(end.finished_at))
                        .push_bind(end.agent_id.map(|a| a.0));
                });
                query.push(concat!(") ", finish_update!(), task_columns!()));
                let rows = query
                    .build_query_as::<TaskRow>()
                    .fetch_all(&mut *tx)
                    .await?;
                let updated = rows
                    .into_iter()
                    .map(TaskRow::into_task)
                    .collect::<StoreResult<_>>()?;
                place_round(ends, chunk, updated, &mut out);
            }
        }
        // Every end's attempt is recorded, applied or not; the first record of a number wins.
        for chunk in pow2_chunks(ends) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO task_attempts \
                 (task_id, number, agent_id, started_at, finished_at, outcome, error) \
                 SELECT * FROM (",
            );
            query.push_values(chunk, |mut row, end| {
                row.push_bind(end.task_id.0)
                    .push_bind(end.attempt)
                    .push_bind(end.agent_id.map(|a| a.0))
                    .push_bind(micros(end.started_at))
                    .push_bind(micros(end.finished_at))
                    .push_bind(end.outcome())
                    .push_bind(end.error());
            });
            // The end of an unknown task is skipped rather than failing the batch on the foreign
            // key.
            query.push(") WHERE column1 IN (SELECT id FROM tasks) ON CONFLICT DO NOTHING");
            query.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn renew_leases(&self, owner: &str, lease_expires_at: Timestamp) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let renewed = sqlx::query(
            "UPDATE tasks SET lease_expires_at = ?2 WHERE status = 'running' AND lease_owner = ?1",
        )
        .bind(owner)
        .bind(micros(lease_expires_at))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(renewed)
    }
});

crate::fleet::fleet_store!(SqliteStore, Sqlite, {
    async fn insert_events(&self, events: &[NewEvent]) -> StoreResult<()> {
        events::insert(self, events).await
    }
});

crate::usage::usage_store!(SqliteStore, Sqlite);

crate::coordination::coordination_store!(SqliteStore, {
    async fn notify(&self, _payload: &str) -> StoreResult<()> {
        Ok(())
    }

    async fn listen(&self) -> StoreResult<Option<crate::Listener>> {
        Ok(None)
    }
});
