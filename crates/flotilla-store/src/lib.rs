//! Persistence of Flotilla's state: the capability traits that make up [`Store`] and their two
//! implementations, SQLite (the embedded default: one file in the data directory, WAL,
//! `synchronous=FULL`) and PostgreSQL (shared by several replicas), which share every statement
//! both dialects accept (see `sql.rs`). Migrations are embedded per backend.
//!
//! Architecture invariant: this is the only crate that writes SQL. It persists ids and timestamps
//! as the caller gives them and makes no decisions beyond the atomicity the contracts below need
//! (first terminal write wins; a claim takes each task once).

use flotilla_core::Timestamp;
use flotilla_core::budget::{Period, Spend};
use flotilla_core::event::EventKind;
use flotilla_core::id::{AgentId, TaskId, TenantId};
use flotilla_core::money::Money;
use flotilla_core::task::{Task, TaskStatus};
use std::sync::Arc;
use std::time::Duration;

mod access;
mod coordination;
mod fleet;
mod postgres;
mod rows;
mod secrets;
mod sql;
mod sqlite;
mod store;
mod tasks;
mod usage;

pub use postgres::PostgresStore;
pub use secrets::{SealedSecret, SecretCursor, SecretSummary, WrappedSecretKey};
pub use sqlite::SqliteStore;
pub use store::{
    AccessStore, CoordinationStore, FleetStore, LifecycleStore, SecretStore, Store, TaskStore,
    UsageStore,
};

/// The capability traits, for calling store methods on a concrete store or a single-capability
/// `Arc<dyn …>` (`use flotilla_store::prelude::*;`).
pub mod prelude {
    pub use crate::store::{
        AccessStore, CoordinationStore, FleetStore, LifecycleStore, SecretStore, Store, TaskStore,
        UsageStore,
    };
}

/// What went wrong in the store. No database driver type appears in it: callers classify errors
/// by kind.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached: the pool timed out or is closed, or I/O failed
    /// (connection refused or lost). Retrying later may succeed.
    #[error("database error: {0}")]
    Unavailable(String),
    /// The database refused this statement or its data (a constraint, an encoding, a decoding);
    /// retrying cannot help.
    #[error("database error: {0}")]
    Rejected(String),
    /// Any other database failure (protocol, TLS, configuration, …); treated as transient.
    #[error("database error: {0}")]
    Other(String),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(String),
    /// A stored row could not be read back into its type (a bug or a hand-edited database).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The change conflicts with stored data (e.g. a name that must be unique is taken).
    #[error("{0}")]
    Conflict(String),
}

impl StoreError {
    /// True when the same call may succeed later (the database was unreachable or busy); false
    /// when the database refused this data or the row is corrupt, so retrying cannot help.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Other(_) => true,
            StoreError::Rejected(_)
            | StoreError::Migrate(_)
            | StoreError::Corrupt(_)
            | StoreError::Conflict(_) => false,
        }
    }
}

/// Whether a database error code says the database ran out of a resource: SQLite's
/// `SQLITE_FULL` (`13`, which has no extended codes) or a PostgreSQL SQLSTATE of class 53
/// (`53100` disk_full, `53200` out_of_memory, `53300` too_many_connections, …).
fn out_of_resources(code: Option<&str>) -> bool {
    code.is_some_and(|code| code == "13" || (code.len() == 5 && code.starts_with("53")))
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let message = e.to_string();
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                StoreError::Unavailable(message)
            }
            // Out of disk, memory or connections (SQLite's SQLITE_FULL, PostgreSQL's class 53):
            // the database did not refuse the data, it could not take it now.
            sqlx::Error::Database(db) if out_of_resources(db.code().as_deref()) => {
                StoreError::Unavailable(message)
            }
            sqlx::Error::Database(_) | sqlx::Error::Encode(_) | sqlx::Error::Decode(_) => {
                StoreError::Rejected(message)
            }
            _ => StoreError::Other(message),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e.to_string())
    }
}

/// Result of the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// Outcome of inserting one task.
#[derive(Clone, Debug, PartialEq)]
pub enum Inserted {
    /// A new task.
    Created(Task),
    /// A task with the same tenant and idempotency key existed; it is returned unchanged.
    Existing(Task),
}

impl Inserted {
    /// The task, new or existing.
    pub fn task(&self) -> &Task {
        match self {
            Inserted::Created(t) | Inserted::Existing(t) => t,
        }
    }
}

/// Filter and page of `list_tasks`. Tasks come newest first (by id, which is UUIDv7).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskFilter {
    /// Only this tenant's tasks (`None`: all tenants).
    pub tenant_id: Option<TenantId>,
    pub status: Option<TaskStatus>,
    pub agent_type: Option<String>,
    /// Only tasks with an id strictly less than this (the cursor of the previous page).
    pub before: Option<TaskId>,
    /// At most this many tasks.
    pub limit: u32,
}

/// Outcome of a cancellation.
#[derive(Clone, Debug, PartialEq)]
pub enum Cancelled {
    /// The task was queued or running and is now `cancelled`.
    Done(Task),
    /// The task had already finished; it is returned unchanged.
    AlreadyFinished(Task),
    /// No such task (for this tenant).
    NotFound,
}

/// A task whose lease expired: back in the queue, or failed when it had lost too many attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct Requeued {
    pub task_id: TaskId,
    pub attempt: i32,
    pub agent_type: String,
    /// True when the task failed instead (`max_lost` reached).
    pub failed: bool,
}

/// Queued tasks that waited too long, for `TaskStore::fail_overdue`.
#[derive(Clone, Copy, Debug)]
pub struct Overdue<'a> {
    /// Only this agent type's tasks; `None`: every type's but those in `except`.
    pub agent_type: Option<&'a str>,
    pub except: &'a [String],
    /// Tasks due (`not_before`) before this instant.
    pub due_before: Timestamp,
    /// The failed tasks' error.
    pub error: &'a str,
    /// At most this many in one call.
    pub limit: u32,
}

/// Filter and page of `list_events`. Events come in id order (oldest first); filters combine with
/// AND.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventFilter {
    /// Only events of this pool.
    pub agent_type: Option<String>,
    /// Only events of this instance.
    pub agent_id: Option<AgentId>,
    pub kind: Option<EventKind>,
    /// Only events a reader of this tenant may read (`flotilla_core::event::visible_to`): fleet
    /// facts and its own. `None`: every event (the platform).
    pub readable_by: Option<TenantId>,
    /// Only events with an id strictly greater than this (the last id already seen), the oldest
    /// first. `None`: the latest events.
    pub after: Option<i64>,
    /// At most this many events.
    pub limit: u32,
}

/// Filter and page of `list_audit`: entries in sequence order (oldest first).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditFilter {
    /// Only entries after this sequence number.
    pub after: Option<i64>,
    pub tenant_id: Option<TenantId>,
    pub action: Option<String>,
    pub limit: u32,
}

/// Filter and page of `list_usage`: records newest first (by id, which is UUIDv7); filters
/// combine with AND.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageFilter {
    /// Only this tenant's records (`None`: all tenants).
    pub tenant_id: Option<TenantId>,
    pub task_id: Option<TaskId>,
    /// Only calls served by this model.
    pub model: Option<String>,
    pub agent_type: Option<String>,
    /// Only records created at or after this instant.
    pub since: Option<Timestamp>,
    /// Only records created before this instant.
    pub until: Option<Timestamp>,
    /// Only records with an id strictly less than this (the cursor of the previous page).
    pub before: Option<uuid::Uuid>,
    /// At most this many records.
    pub limit: u32,
}

/// One budget window of a tenant, as `reserve_budget` and `settle_budget` see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetWindow {
    pub period: Period,
    /// The window's first instant ([`Period::window`]); with the tenant and period, it names the
    /// window's counters.
    pub start: Timestamp,
    /// `None`: count but never refuse (`alert_only`, or `downgrade`, which the caller checks).
    pub limit: Option<Money>,
}

/// Outcome of `reserve_budget`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Every window took the amount: their spend *before* it, in the order of the windows.
    Granted(Vec<Spend>),
    /// Nothing was reserved: the window at `index` (the first, in the caller's order, that could
    /// not take the amount) had this spend.
    Refused { index: usize, spend: Spend },
}

/// One bucket that [`UsageStore::take_buckets`] takes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketTake {
    /// Names the bucket, e.g. `tenant-req:<tenant id>`.
    pub subject: String,
    /// The bucket's capacity and refill period now; a stored bucket made for others is rescaled
    /// ([`flotilla_core::quota::Bucket::reconfigured`]).
    pub capacity: u64,
    pub period: Duration,
    /// Units to take.
    pub n: u64,
}

/// One reservation that [`UsageStore::settle_buckets`] reconciles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketSettle {
    /// Names the bucket, as in [`BucketTake`].
    pub subject: String,
    /// The bucket's capacity and refill period now, as in [`BucketTake`].
    pub capacity: u64,
    pub period: Duration,
    /// Units the call took.
    pub reserved: u64,
    /// Units it used.
    pub actual: u64,
}

/// A stored bucket read back: the `rate_buckets` columns of both backends.
pub(crate) fn bucket_from_row(
    capacity: i64,
    period_ms: i64,
    level: &str,
    updated_at: i64,
) -> StoreResult<flotilla_core::quota::Bucket> {
    let corrupt = || StoreError::Corrupt(format!("rate bucket level `{level}`"));
    let state = flotilla_core::quota::BucketState {
        capacity,
        period_ms,
        level: level.parse().map_err(|_| corrupt())?,
        updated: rows::from_micros(updated_at)?,
    };
    flotilla_core::quota::Bucket::restore(state).ok_or_else(corrupt)
}

/// A term of leadership that a write is valid under (fencing, docs/design.md §9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The lease's name.
    pub lease: String,
    pub holder: String,
    pub generation: i64,
}

/// A leader lease as it stands (docs/design.md §9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderLease {
    /// Who holds it (a control plane's owner name).
    pub holder: String,
    /// Grows by one each time the lease changes hands (a fencing token).
    pub generation: i64,
    /// When it ends unless renewed.
    pub expires_at: Timestamp,
}

/// How many control planes share a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topology {
    /// One process owns the store (SQLite: one file in the data directory).
    Embedded,
    /// Several replicas share the store (PostgreSQL): leases, notifications and shared counters
    /// coordinate them.
    Shared,
}

impl Topology {
    /// True when several control planes may share the store.
    pub fn is_shared(self) -> bool {
        self == Topology::Shared
    }

    /// The backend's name for logs: `"sqlite"` or `"postgres"`.
    pub fn name(self) -> &'static str {
        match self {
            Topology::Embedded => "sqlite",
            Topology::Shared => "postgres",
        }
    }
}

impl std::fmt::Display for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Connections of the store's pools (SQLite: the writer and the readers together).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open now.
    pub open: u32,
    /// Of those, idle.
    pub idle: u32,
    /// The most the pools may open.
    pub max: u32,
}

/// The PostgreSQL channel of [`CoordinationStore::notify`].
pub const CHANNEL: &str = "flotilla";

/// Notifications from every control plane on a PostgreSQL database.
pub struct Listener(sqlx::postgres::PgListener);

impl Listener {
    /// The next notification's payload; `Ok(None)` when the connection was lost, in which case
    /// notifications sent meanwhile are gone (the caller should catch up another way) and the
    /// next call reconnects. An error means the database cannot be reached now.
    pub async fn recv(&mut self) -> StoreResult<Option<String>> {
        Ok(self.0.try_recv().await?.map(|n| n.payload().to_owned()))
    }
}

/// A shared store.
pub type DynStore = Arc<dyn Store>;

/// Opens the configured store and applies pending migrations. On SQLite, `max_connections` is the
/// number of read connections beside the single writer.
pub async fn open(
    database: &flotilla_core::config::Database,
    max_connections: u32,
) -> StoreResult<DynStore> {
    let store: DynStore = match database {
        flotilla_core::config::Database::Sqlite(path) => {
            Arc::new(SqliteStore::open(path, max_connections).await?)
        }
        flotilla_core::config::Database::Postgres(url) => {
            Arc::new(PostgresStore::connect(url, max_connections).await?)
        }
    };
    store.migrate().await?;
    Ok(store)
}
