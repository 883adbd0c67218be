//! The PostgreSQL store, shared by several replicas.
//!
//! Claims lock their rows with `FOR UPDATE SKIP LOCKED`, so concurrent claims (from this replica
//! or another) never take the same task and never wait for each other. Each trait call is one
//! transaction; JSON is stored as JSONB and selected as text so both backends decode the same rows.

use crate::coordination::FENCE_PG;
use crate::rows::{
    AttemptRow, EndUpdate, TaskRow, attach_attempts, created_task, finish_update, micros,
    migrations_applied, place_round, rounds,
};
use crate::tasks::EXPIRED_PG;
use crate::{Cancelled, Inserted, StoreError, StoreResult};
use async_trait::async_trait;
use flotilla_core::Timestamp;
use flotilla_core::event::NewEvent;
use flotilla_core::id::{TaskId, TenantId};
use flotilla_core::task::{AttemptEnd, Lease, NewTask, Task};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{Connection, PgExecutor, Postgres};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use uuid::Uuid;

mod buckets;
mod events;
mod usage;

crate::access::access_store!(PostgresStore, Postgres);
crate::secrets::secret_store!(PostgresStore);

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The columns of a [`TaskRow`], JSONB as text.
macro_rules! task_columns {
    () => {
        "id, tenant_id, agent_type, input::text AS input, priority, complexity, idempotency_key, \
         timeout_ms, max_attempts, status, attempt, output::text AS output, error, usage::text AS usage, \
         agent_id, trace_id, created_at, updated_at, not_before, started_at, finished_at"
    };
}

/// Longest wait for a connection of the pool. While the database is down sqlx keeps retrying
/// refused connections until this runs out, so it bounds how long a request (a submission,
/// `/ready`) hangs before it is answered 503; sqlx's default of 30 s outlasts any client's
/// patience and a readiness probe's timeout.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const ATTEMPTS_OF_TASKS: &str = "SELECT task_id, number, agent_id, started_at, finished_at, outcome, error \
     FROM task_attempts WHERE task_id = ANY($1) ORDER BY task_id, number";

/// The PostgreSQL implementation of [`Store`].
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// The `NOTIFY` channel: [`crate::CHANNEL`], or one per schema (tests share a database).
    channel: String,
}

impl PostgresStore {
    /// Connects a pool of up to `max_connections` to `url`. Does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)?;
        Self::with_options(options, max_connections).await
    }

    /// Connects like [`PostgresStore::connect`], with every table in `schema`, which is created
    /// if missing (each test uses its own).
    pub async fn connect_in_schema(
        url: &str,
        schema: &str,
        max_connections: u32,
    ) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let mut conn = PgConnection::connect_with(&options).await?;
        // An identifier cannot be a bound parameter; the server quotes it.
        let create: String =
            sqlx::query_scalar("SELECT format('CREATE SCHEMA IF NOT EXISTS %I', $1::text)")
                .bind(schema)
                .fetch_one(&mut conn)
                .await?;
        sqlx::raw_sql(&create).execute(&mut conn).await?;
        let quoted: String = sqlx::query_scalar("SELECT quote_ident($1)")
            .bind(schema)
            .fetch_one(&mut conn)
            .await?;
        conn.close().await?;
        let mut store =
            Self::with_options(options.options([("search_path", quoted)]), max_connections).await?;
        store.channel = format!("{}_{schema}", crate::CHANNEL)
            .chars()
            .take(63)
            .collect();
        Ok(store)
    }

    /// Drops `schema` and everything in it (tests and benchmarks clean up their own schema).
    pub async fn drop_schema(url: &str, schema: &str) -> StoreResult<()> {
        let mut conn = PgConnection::connect_with(&PgConnectOptions::from_str(url)?).await?;
        // An identifier cannot be a bound parameter; the server quotes it.
        let drop: String =
            sqlx::query_scalar("SELECT format('DROP SCHEMA IF EXISTS %I CASCADE', $1::text)")
                .bind(schema)
                .fetch_one(&mut conn)
                .await?;
        sqlx::raw_sql(&drop).execute(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    /// Closes the connection pool (benchmarks close it before dropping their schema).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction (see [`crate::sql`]).
    async fn begin(&self) -> StoreResult<sqlx::Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// Where a single-statement write runs: the pool, since one statement is atomic.
    async fn writer(&self) -> StoreResult<Write<'_>> {
        Ok(Write(&self.pool))
    }

    /// Serialises appends to the audit chain across replicas: a transaction-level advisory lock
    /// keyed by the table's oid, so each schema has its own.
    async fn lock_audit(tx: &mut PgConnection) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock('audit'::regclass::oid::int8)")
            .execute(tx)
            .await?;
        Ok(())
    }

    /// Where reads run: the pool.
    fn reads(&self) -> &PgPool {
        &self.pool
    }

    async fn with_options(options: PgConnectOptions, max_connections: u32) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            channel: crate::CHANNEL.to_owned(),
        })
    }
}

/// A single-statement write (see [`crate::sql`]): straight on the pool.
struct Write<'a>(&'a PgPool);

impl<'a> Write<'a> {
    fn conn(&mut self) -> &'a PgPool {
        self.0
    }

    async fn commit(self) -> StoreResult<()> {
        Ok(())
    }
}

async fn load_attempts<'c>(conn: impl PgExecutor<'c>, tasks: &mut [Task]) -> StoreResult<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = tasks.iter().map(|t| t.id.0).collect();
    let rows = sqlx::query_as::<_, AttemptRow>(ATTEMPTS_OF_TASKS)
        .bind(ids)
        .fetch_all(conn)
        .await?;
    attach_attempts(tasks, rows)
}

async fn fetch_task(
    conn: &mut PgConnection,
    tenant: Option<TenantId>,
    id: TaskId,
) -> StoreResult<Option<Task>> {
    let row = sqlx::query_as::<_, TaskRow>(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)"
    ))
    .bind(id.0)
    .bind(tenant.map(|t| t.0))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut task = row.into_task()?;
    load_attempts(conn, std::slice::from_mut(&mut task)).await?;
    Ok(Some(task))
}

#[async_trait]
impl crate::LifecycleStore for PostgresStore {
    fn pool_stats(&self) -> crate::PoolStats {
        crate::PoolStats {
            open: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
        }
    }

    fn topology(&self) -> crate::Topology {
        crate::Topology::Shared
    }

    async fn migrate(&self) -> StoreResult<()> {
        Ok(MIGRATOR.run(&self.pool).await?)
    }

    async fn ready(&self) -> StoreResult<bool> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        let table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        if !table {
            return Ok(false);
        }
        let applied: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?;
        Ok(migrations_applied(&MIGRATOR, &applied))
    }
}

crate::tasks::task_store!(PostgresStore, Postgres, FENCE_PG, EXPIRED_PG, {
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
        let mut tx = self.pool.begin().await?;
        // One statement over arrays, inserting in the batch's order; a row whose idempotency key
        // exists (before or earlier in the batch) is skipped.
        let created: HashSet<Uuid> = sqlx::query_scalar(
            "INSERT INTO tasks (id, tenant_id, agent_type, input, priority, complexity, \
             idempotency_key, timeout_ms, max_attempts, status, attempt, trace_id, created_at, \
             updated_at, not_before, started_at, lease_owner, lease_expires_at) \
             SELECT id, tenant_id, agent_type, input, priority, complexity, idempotency_key, \
             timeout_ms, max_attempts, status, attempt, trace_id, created_at, created_at, created_at, \
             started_at, lease_owner, lease_expires_at \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[], $5::int4[], \
             $6::float8[], $7::text[], $8::int8[], $9::int4[], $10::text[], $11::int8[], \
             $12::text[], $13::int4[], $14::int8[], $15::text[], $16::int8[]) \
             WITH ORDINALITY AS n (id, tenant_id, agent_type, input, priority, complexity, \
             idempotency_key, timeout_ms, max_attempts, trace_id, created_at, status, attempt, \
             started_at, lease_owner, lease_expires_at, ord) \
             ORDER BY ord \
             ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(tasks.iter().map(|t| t.id.0).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.tenant_id.0).collect::<Vec<_>>())
        .bind(
            tasks
                .iter()
                .map(|t| t.agent_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(tasks.iter().map(|t| Json(&t.input)).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.priority).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.complexity).collect::<Vec<_>>())
        .bind(
            tasks
                .iter()
                .map(|t| t.idempotency_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(tasks.iter().map(|t| t.timeout_ms).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.max_attempts).collect::<Vec<_>>())
        .bind(
            tasks
                .iter()
                .map(|t| t.trace_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            tasks
                .iter()
                .map(|t| micros(t.created_at))
                .collect::<Vec<_>>(),
        )
        .bind(tasks.iter().map(|t| t.status.as_str()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.attempt).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.started_at.map(micros)).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| leases.get(&t.id.0).map(|l| l.owner.as_str())).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| leases.get(&t.id.0).map(|l| micros(l.expires_at))).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            if created.contains(&task.id.0) {
                out.push(Inserted::Created(task));
                continue;
            }
            let row = sqlx::query_as::<_, TaskRow>(concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE tenant_id = $1 AND idempotency_key = $2"
            ))
            .bind(task.tenant_id.0)
            .bind(task.idempotency_key.as_deref())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("task {} conflicted with no stored task", task.id))
            })?;
            let mut existing = row.into_task()?;
            load_attempts(&mut *tx, std::slice::from_mut(&mut existing)).await?;
            out.push(Inserted::Existing(existing));
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn get_task(&self, tenant: Option<TenantId>, id: TaskId) -> StoreResult<Option<Task>> {
        // REPEATABLE READ, so that the task and its attempts come from the same snapshot.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
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
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query_as::<_, TaskRow>(concat!(
            "UPDATE tasks SET status = 'cancelled', finished_at = $3, updated_at = $3, lease_owner = NULL, \
             lease_expires_at = NULL \
             WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) AND status IN ('queued', 'running') \
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
                load_attempts(&mut *tx, std::slice::from_mut(&mut task)).await?;
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
        let rows = sqlx::query_as::<_, TaskRow>(concat!(
            "WITH picked AS (SELECT id FROM tasks \
             WHERE status = 'queued' AND tenant_id = $6 AND agent_type = $4 AND not_before <= $1 \
             ORDER BY priority DESC, id ASC LIMIT $5 FOR UPDATE SKIP LOCKED) \
             UPDATE tasks SET status = 'running', attempt = attempt + 1, started_at = COALESCE(started_at, $1), \
             updated_at = $1, lease_owner = $2, lease_expires_at = $3 \
             WHERE id IN (SELECT id FROM picked) \
             RETURNING ",
            task_columns!()
        ))
        .bind(micros(now))
        .bind(owner)
        .bind(micros(lease_expires_at))
        .bind(agent_type)
        .bind(i64::from(limit))
        .bind(tenant.0)
        .fetch_all(&self.pool)
        .await?;
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
        let mut tx = self.pool.begin().await?;
        let mut out: Vec<Option<Task>> = vec![None; ends.len()];
        for round in rounds(ends) {
            let members: Vec<&AttemptEnd> = round.iter().filter_map(|&i| ends.get(i)).collect();
            let updates: Vec<EndUpdate<'_>> = members.iter().map(|e| EndUpdate::of(e)).collect();
            let rows = sqlx::query_as::<_, TaskRow>(concat!(
                "WITH e AS (SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[], \
                 $5::jsonb[], $6::jsonb[], $7::text[], $8::int8[], $9::int8[], $10::uuid[]) \
                 AS e (e_task, e_attempt, e_kind, e_status, e_output, e_usage, e_error, \
                 e_not_before, e_finished_at, e_agent)) ",
                finish_update!(),
                task_columns!()
            ))
            .bind(members.iter().map(|e| e.task_id.0).collect::<Vec<_>>())
            .bind(members.iter().map(|e| e.attempt).collect::<Vec<_>>())
            .bind(updates.iter().map(|u| u.kind).collect::<Vec<_>>())
            .bind(updates.iter().map(|u| u.status).collect::<Vec<_>>())
            .bind(
                updates
                    .iter()
                    .map(|u| u.output.map(Json))
                    .collect::<Vec<_>>(),
            )
            .bind(
                updates
                    .iter()
                    .map(|u| u.usage.map(Json))
                    .collect::<Vec<_>>(),
            )
            .bind(updates.iter().map(|u| u.error).collect::<Vec<_>>())
            .bind(updates.iter().map(|u| u.not_before).collect::<Vec<_>>())
            .bind(
                members
                    .iter()
                    .map(|e| micros(e.finished_at))
                    .collect::<Vec<_>>(),
            )
            .bind(
                members
                    .iter()
                    .map(|e| e.agent_id.map(|a| a.0))
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *tx)
            .await?;
            let updated = rows
                .into_iter()
                .map(TaskRow::into_task)
                .collect::<StoreResult<_>>()?;
            place_round(ends, &round, updated, &mut out);
        }
        // Every end's attempt is recorded, applied or not; the first record of a number wins.
        // The end of an unknown task is skipped rather than failing the batch on the foreign key.
        sqlx::query(
            "INSERT INTO task_attempts \
             (task_id, number, agent_id, started_at, finished_at, outcome, error) \
             SELECT task_id, number, agent_id, started_at, finished_at, outcome, error \
             FROM UNNEST($1::uuid[], $2::int4[], $3::uuid[], $4::int8[], $5::int8[], $6::text[], \
             $7::text[]) WITH ORDINALITY \
             AS a (task_id, number, agent_id, started_at, finished_at, outcome, error, ord) \
             WHERE EXISTS (SELECT 1 FROM tasks WHERE tasks.id = a.task_id) \
             ORDER BY ord ON CONFLICT DO NOTHING",
        )
        .bind(ends.iter().map(|e| e.task_id.0).collect::<Vec<_>>())
        .bind(ends.iter().map(|e| e.attempt).collect::<Vec<_>>())
        .bind(
            ends.iter()
                .map(|e| e.agent_id.map(|a| a.0))
                .collect::<Vec<_>>(),
        )
        .bind(
            ends.iter()
                .map(|e| micros(e.started_at))
                .collect::<Vec<_>>(),
        )
        .bind(
            ends.iter()
                .map(|e| micros(e.finished_at))
                .collect::<Vec<_>>(),
        )
        .bind(ends.iter().map(AttemptEnd::outcome).collect::<Vec<_>>())
        .bind(ends.iter().map(AttemptEnd::error).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn renew_leases(&self, owner: &str, lease_expires_at: Timestamp) -> StoreResult<u64> {
        // SKIP LOCKED: a task locked right now is being finished, cancelled or requeued, so its
        // lease no longer matters; skipping it means renewal never waits for (or deadlocks with)
        // a batch of finishes that locks the same rows in another order.
        let renewed = sqlx::query(
            "UPDATE tasks SET lease_expires_at = $2 WHERE id IN (SELECT id FROM tasks \
             WHERE status = 'running' AND lease_owner = $1 FOR UPDATE SKIP LOCKED)",
        )
        .bind(owner)
        .bind(micros(lease_expires_at))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(renewed)
    }
});

crate::fleet::fleet_store!(PostgresStore, Postgres, {
    async fn insert_events(&self, events: &[NewEvent]) -> StoreResult<()> {
        events::insert(self, events).await
    }
});

crate::usage::usage_store!(PostgresStore, Postgres);

crate::coordination::coordination_store!(PostgresStore, {
    async fn notify(&self, payload: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn listen(&self) -> StoreResult<Option<crate::Listener>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(&self.channel).await?;
        Ok(Some(crate::Listener(listener)))
    }
});
