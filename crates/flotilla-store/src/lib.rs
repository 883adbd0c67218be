//! Persistence of Flotilla's state: the [`Store`] trait and its two implementations, SQLite (the
//! embedded default: one file in the data directory, WAL, `synchronous=FULL`) and PostgreSQL
//! (shared by several replicas). Migrations are embedded per backend.
//!
//! Architecture invariant: this is the only crate that writes SQL. It persists ids and timestamps
//! as the caller gives them and makes no decisions beyond the atomicity the contracts below need
//! (first terminal write wins; a claim takes each task once).

use async_trait::async_trait;
use flotilla_core::Timestamp;
use flotilla_core::agent::{AgentInstance, AgentStatus};
use flotilla_core::audit::{AuditEntry, NewAuditEntry};
use flotilla_core::auth::ApiKeyRecord;
use flotilla_core::budget::{Budget, Period, Spend};
use flotilla_core::event::{Event, EventKind, NewEvent};
use flotilla_core::id::{AgentId, TaskId, TenantId};
use flotilla_core::money::Money;
use flotilla_core::rate::Rate;
use flotilla_core::task::{AttemptEnd, NewTask, Task, TaskStatus};
use flotilla_core::tenant::Tenant;
use flotilla_core::usage::{DailyUsage, UsageRecord};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

mod access;
mod alert_board;
mod leases;
mod postgres;
mod rows;
mod secrets;
mod sqlite;
mod usage;

pub use postgres::PostgresStore;
pub use secrets::{SealedSecret, SecretCursor, SecretSummary, WrappedSecretKey};
pub use sqlite::SqliteStore;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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
            StoreError::Database(
                sqlx::Error::Database(_) | sqlx::Error::Encode(_) | sqlx::Error::Decode(_),
            ) => false,
            StoreError::Database(_) => true,
            StoreError::Migrate(_) | StoreError::Corrupt(_) | StoreError::Conflict(_) => false,
        }
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

/// A task whose lease expired and which went back to the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Requeued {
    pub task_id: TaskId,
    pub attempt: i32,
    pub agent_type: String,
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

/// One bucket that [`Store::take_buckets`] takes from.
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

/// One reservation that [`Store::settle_buckets`] reconciles.
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

/// Everything Flotilla persists. Implementations must be safe to share between tasks.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// The connection pools' state now.
    fn pool_stats(&self) -> PoolStats;

    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;
    /// Ok when the database answers and every embedded migration is applied.
    async fn ready(&self) -> StoreResult<bool>;

    // --- tenants and keys ---
    /// Creates the tenant if it does not exist.
    async fn ensure_tenant(&self, id: TenantId, name: &str, now: Timestamp) -> StoreResult<()>;
    async fn insert_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()>;
    async fn get_api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>>;
    async fn count_api_keys(&self) -> StoreResult<u64>;
    /// Creates a tenant; false when its name is taken.
    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<bool>;
    async fn get_tenant(&self, id: TenantId) -> StoreResult<Option<Tenant>>;
    /// Every tenant, by name.
    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>>;
    /// Renames and/or sets the rate limit (`Some(None)` clears it); `None` when there is no such
    /// tenant, [`StoreError::Conflict`] when the name is taken.
    async fn update_tenant(
        &self,
        id: TenantId,
        name: Option<&str>,
        rate_limit: Option<Option<Rate>>,
    ) -> StoreResult<Option<Tenant>>;
    /// Keys of one tenant (or of all), oldest first.
    async fn list_api_keys(&self, tenant: Option<TenantId>) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Revokes a key (of `tenant`, when given) at `now`, unless it already was; returns the key,
    /// or `None` when there is no such key.
    async fn revoke_api_key(
        &self,
        tenant: Option<TenantId>,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<Option<ApiKeyRecord>>;

    // --- audit log ---
    /// Appends entries to the hash chain, in order, and returns them chained.
    async fn append_audit(&self, entries: &[NewAuditEntry]) -> StoreResult<Vec<AuditEntry>>;
    async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>>;

    // --- tasks ---
    /// Inserts tasks in one transaction, in order. A task whose (tenant, idempotency key) exists
    /// already yields [`Inserted::Existing`] with the stored task and inserts nothing.
    async fn insert_tasks(&self, tasks: &[NewTask]) -> StoreResult<Vec<Inserted>>;
    /// One task with its attempts, when it exists (and belongs to `tenant`, when given).
    async fn get_task(&self, tenant: Option<TenantId>, id: TaskId) -> StoreResult<Option<Task>>;
    async fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<Vec<Task>>;
    /// Queued or running → cancelled (first terminal write wins).
    async fn cancel_task(
        &self,
        tenant: Option<TenantId>,
        id: TaskId,
        now: Timestamp,
    ) -> StoreResult<Cancelled>;
    /// Claims up to `limit` queued tasks of `agent_type` whose `not_before` has passed, in order of
    /// priority (high first) then age (old first): each becomes `running`, its `attempt` grows by
    /// one, `started_at` is set if unset, and it gets the lease (`owner`, `lease_expires_at`).
    /// A task is never returned to two concurrent claims. With `tenants`, only tasks of those
    /// tenants are claimed (the tenants the free instances may serve).
    async fn claim_tasks(
        &self,
        agent_type: &str,
        tenants: Option<&[TenantId]>,
        limit: u32,
        owner: &str,
        lease_expires_at: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Vec<Task>>;
    /// Records the end of attempts in one transaction. Each end applies only if the task is still
    /// `running` with that attempt number (otherwise it was cancelled or its lease expired and it
    /// was claimed again) — the attempt row is recorded either way. Returns, per end, the updated
    /// task (without its attempts: this is the hot path) when it applied and `None` when it did
    /// not.
    async fn finish_attempts(&self, ends: &[AttemptEnd]) -> StoreResult<Vec<Option<Task>>>;
    /// Extends the lease of every running task owned by `owner`.
    async fn renew_leases(&self, owner: &str, lease_expires_at: Timestamp) -> StoreResult<u64>;
    /// Returns running tasks whose lease expired before `now` to `queued` (available at once),
    /// recording a `lost` attempt for each.
    ///
    /// With a `fence`, only while that term of leadership holds: the lease row is checked and
    /// share-locked in the same transaction, so no other control plane can take the lease while
    /// it runs, and a leader whose term ended (it paused past its lease, say) requeues nothing.
    async fn requeue_expired(
        &self,
        now: Timestamp,
        fence: Option<&Fence>,
    ) -> StoreResult<Vec<Requeued>>;
    /// Number of tasks per status (all tenants): every status in lifecycle order
    /// ([`TaskStatus::ALL`]), those without tasks with 0.
    async fn task_counts_by_status(&self) -> StoreResult<Vec<(TaskStatus, u64)>>;
    /// Number of queued tasks per agent type.
    async fn queued_by_type(&self) -> StoreResult<BTreeMap<String, u64>>;

    // --- agents ---
    async fn insert_agent(&self, agent: &AgentInstance) -> StoreResult<()>;
    async fn get_agent(&self, id: AgentId) -> StoreResult<Option<AgentInstance>>;
    async fn list_agents(&self) -> StoreResult<Vec<AgentInstance>>;
    /// Records a heartbeat; false when the agent does not exist.
    async fn heartbeat_agent(
        &self,
        id: AgentId,
        load: u32,
        status: AgentStatus,
        now: Timestamp,
    ) -> StoreResult<bool>;
    /// Sets the status; false when the agent does not exist.
    async fn set_agent_status(&self, id: AgentId, status: AgentStatus) -> StoreResult<bool>;
    /// Removes the agent; false when it did not exist.
    async fn delete_agent(&self, id: AgentId) -> StoreResult<bool>;

    // --- events ---
    /// Records events in one transaction, numbering them in order with ids greater than every
    /// id recorded before (pruned ones included). Once an id is visible to `list_events`, no
    /// event with a smaller id appears later, so following the `after` cursor misses nothing.
    async fn insert_events(&self, events: &[NewEvent]) -> StoreResult<()>;
    /// With `after`, the first `limit` matching events after it; without, the latest `limit`
    /// matching events. Either way in ascending id order.
    async fn list_events(&self, filter: &EventFilter) -> StoreResult<Vec<Event>>;
    /// Deletes all but the newest `keep` events; returns how many it deleted.
    async fn prune_events(&self, keep: u64) -> StoreResult<u64>;

    // --- secrets ---
    /// Appends a sealed version, which applies only when its number is exactly one more than the
    /// last version ever written at its tenant and path (1 for a new path; deleted versions
    /// count), and deletes versions older than the newest `keep`. False when another writer got
    /// there first: seal again with the next number.
    async fn insert_secret_version(&self, secret: &SealedSecret, keep: u32) -> StoreResult<bool>;
    /// The last version number ever written at a path, deleted or not.
    async fn last_secret_version(&self, tenant: TenantId, path: &str) -> StoreResult<Option<u32>>;
    /// One kept version of a secret (the newest when `version` is `None`).
    async fn get_secret_version(
        &self,
        tenant: TenantId,
        path: &str,
        version: Option<u32>,
    ) -> StoreResult<Option<SealedSecret>>;
    /// Live secrets of a tenant whose path starts with `prefix`, at most `limit`, in path order.
    async fn list_secrets(
        &self,
        tenant: TenantId,
        prefix: &str,
        limit: u32,
    ) -> StoreResult<Vec<SecretSummary>>;
    /// Deletes every version of a live secret; `None` when there was none, else how many
    /// versions went. Its version numbers stay used.
    async fn delete_secret(
        &self,
        tenant: TenantId,
        path: &str,
        now: Timestamp,
    ) -> StoreResult<Option<u32>>;
    /// Data keys (of all tenants) not wrapped by the master key `current`, in (tenant, path,
    /// version) order after `after`, at most `limit`.
    async fn secret_keys_to_rewrap(
        &self,
        current: &str,
        after: Option<&SecretCursor>,
        limit: u32,
    ) -> StoreResult<Vec<WrappedSecretKey>>;
    /// Replaces one data key's wrapping if it is still as `old` says; false when it changed or
    /// the version is gone.
    async fn rewrap_secret_key(
        &self,
        old: &WrappedSecretKey,
        wrapped_key: &[u8],
        master_key_id: &str,
    ) -> StoreResult<bool>;
    /// Number of kept secret versions per master key id.
    async fn secret_versions_by_master_key(&self) -> StoreResult<Vec<(String, u64)>>;

    // --- model usage and budgets ---
    /// Records usage in one transaction; a record whose id exists already is skipped (the ledger
    /// may retry a batch whose commit it did not see).
    async fn insert_usage(&self, records: &[UsageRecord]) -> StoreResult<()>;
    /// Records matching the filter, newest first (by id, UUIDv7).
    async fn list_usage(&self, filter: &UsageFilter) -> StoreResult<Vec<UsageRecord>>;
    /// Sum of the known costs of a tenant's usage created in `[since, until)`.
    async fn usage_spend(
        &self,
        tenant: TenantId,
        since: Timestamp,
        until: Timestamp,
    ) -> StoreResult<Money>;
    /// Usage created in `[since, until)`, of one tenant or of all, summed per UTC day, model and
    /// agent type; ordered by day, model, then agent type (calls outside a task first).
    async fn usage_daily(
        &self,
        tenant: Option<TenantId>,
        since: Timestamp,
        until: Timestamp,
    ) -> StoreResult<Vec<DailyUsage>>;
    /// Creates or replaces the tenant's budget for its period.
    async fn put_budget(&self, budget: &Budget) -> StoreResult<()>;
    /// Budgets of one tenant or of all, by tenant then period (daily first).
    async fn list_budgets(&self, tenant: Option<TenantId>) -> StoreResult<Vec<Budget>>;
    /// Deletes a budget (its window counters stay until pruned); false when there was none.
    async fn delete_budget(&self, tenant: TenantId, period: Period) -> StoreResult<bool>;
    /// Records that `threshold` (a percentage) fired in the window starting at `window_start`;
    /// true only the first time, across every process sharing the database.
    async fn mark_budget_threshold(
        &self,
        tenant: TenantId,
        period: Period,
        window_start: Timestamp,
        threshold: u32,
        now: Timestamp,
    ) -> StoreResult<bool>;
    /// Atomically reserves `amount` in each of the tenant's budget `windows` (distinct windows)
    /// if every window can take it. A window's spend is its spent counter and the sum of the
    /// reservations of all owners updated at or after `stale_before`; it fits when its `limit`
    /// is `None` or `spent + reserved + amount <= limit`. If all fit, adds `amount` to `owner`'s
    /// reservation in each window (a stale reservation of `owner` is replaced, since it no
    /// longer counted), sets its `updated_at` to `now`, and returns each window's spend before
    /// the reservation. Otherwise changes nothing and returns the first window, in the caller's
    /// order, that did not fit.
    ///
    /// Atomic across concurrent callers and processes: PostgreSQL locks each window's counter
    /// row in a fixed order; SQLite's single writer serialises the calls.
    async fn reserve_budget(
        &self,
        tenant: TenantId,
        windows: &[BudgetWindow],
        amount: Money,
        owner: &str,
        now: Timestamp,
        stale_before: Timestamp,
    ) -> StoreResult<Reservation>;
    /// Settles a call: subtracts `reserved` from `owner`'s reservation in each window (not below
    /// zero, `updated_at` set to `now`) and adds `actual` to each window's spent counter. Returns
    /// per window, in order, the spent counter before and after, so the caller can tell which
    /// thresholds the call crossed.
    async fn settle_budget(
        &self,
        tenant: TenantId,
        windows: &[BudgetWindow],
        reserved: Money,
        actual: Money,
        owner: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<(Money, Money)>>;
    /// The spend of one window now: its spent counter and the reservations of all owners updated
    /// at or after `stale_before`.
    async fn budget_spend(
        &self,
        tenant: TenantId,
        window: &BudgetWindow,
        stale_before: Timestamp,
    ) -> StoreResult<Spend>;
    /// Deletes reservations last updated before `stale_before` (those of processes that stopped)
    /// and the counters, reservations and fired thresholds of windows that started before
    /// `windows_before` (which must precede the start of every current window, e.g. the start of
    /// the previous month); returns how many rows it deleted.
    async fn prune_budget_state(
        &self,
        stale_before: Timestamp,
        windows_before: Timestamp,
    ) -> StoreResult<u64>;

    // --- rate-limit buckets ---
    /// Takes `n` units from each bucket (distinct subjects), all or none, at `now` (kept to the
    /// microsecond). A bucket without a row is full. The decision is
    /// [`flotilla_core::quota::take_all`] on the stored buckets: on success every bucket is
    /// written back; otherwise nothing changes and the answer is the index, in the caller's
    /// order, of the first bucket that refused and its retry-after.
    ///
    /// Atomic across concurrent callers and processes: PostgreSQL locks the rows one by one in
    /// subject order; SQLite's single writer serialises the calls.
    async fn take_buckets(
        &self,
        takes: &[BucketTake],
        now: Timestamp,
    ) -> StoreResult<Result<(), (usize, Duration)>>;
    /// Reconciles reservations ([`flotilla_core::quota::Bucket::settle`]), each bucket under the
    /// same lock as a take; a bucket without a row starts full.
    async fn settle_buckets(&self, settles: &[BucketSettle], now: Timestamp) -> StoreResult<()>;
    /// Deletes up to `limit` buckets last written before `idle_before` that are full at `now`
    /// (a missing bucket is full, so no decision changes); returns how many it deleted.
    async fn prune_buckets(
        &self,
        idle_before: Timestamp,
        now: Timestamp,
        limit: u32,
    ) -> StoreResult<u64>;

    // --- the alert engine's shared state (docs/design.md §9, §11) ---
    /// Stores a silence (its JSON), in force until `until`; replaces one with the same id.
    async fn put_silence(&self, id: uuid::Uuid, until: Timestamp, body: &str) -> StoreResult<()>;
    /// Deletes a silence and returns its JSON; `None` when there is none with this id.
    async fn delete_silence(&self, id: uuid::Uuid) -> StoreResult<Option<String>>;
    /// The silences still in force at `now`, oldest first; those that ended are deleted.
    async fn list_silences(&self, now: Timestamp) -> StoreResult<Vec<String>>;
    /// Publishes a document of the alert board under `name`.
    async fn put_board(&self, name: &str, body: &str, now: Timestamp) -> StoreResult<()>;
    /// A document of the alert board and when it was published.
    async fn get_board(&self, name: &str) -> StoreResult<Option<(String, Timestamp)>>;

    // --- leadership and notifications across replicas (docs/design.md §9) ---
    /// Grants or renews the lease `name` to `holder` until `until` when it is free, already
    /// `holder`'s, or ended before `now`; otherwise changes nothing. Returns the lease as it
    /// stands afterwards: `holder` holds it exactly when its `holder` is theirs. The generation
    /// grows by one whenever the lease changes hands. Atomic across processes.
    async fn claim_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> StoreResult<LeaderLease>;
    /// Ends `holder`'s lease `name` at `now` (a clean shutdown hands over without waiting for it
    /// to expire); false when `holder` did not hold it.
    async fn release_lease(&self, name: &str, holder: &str, now: Timestamp) -> StoreResult<bool>;
    /// Counts the leases whose name starts with `prefix` (which holds no `%` or `_`) that have
    /// not ended at `now`, after
    /// deleting those that ended before `forget_before`.
    async fn live_leases(
        &self,
        prefix: &str,
        now: Timestamp,
        forget_before: Timestamp,
    ) -> StoreResult<u64>;
    /// Tells every control plane listening on this database (PostgreSQL `NOTIFY` on the
    /// channel [`CHANNEL`], or a channel of the schema's when the store lives in one); nothing
    /// on SQLite, where one control plane runs.
    async fn notify(&self, payload: &str) -> StoreResult<()>;
    /// Listens to [`notify`](Store::notify) from every control plane on this database,
    /// this one's included; `None` on SQLite.
    async fn listen(&self) -> StoreResult<Option<Listener>>;
}

/// The PostgreSQL channel of [`Store::notify`].
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
