//! The store's contract, split by capability: each trait is what one service of the server needs,
//! small enough to fake in a test. [`Store`] is all of them together; both backends implement
//! every capability, so a [`crate::DynStore`] upcasts to any one of them
//! (`let c: Arc<dyn CoordinationStore> = store;`).

use crate::secrets::{SealedSecret, SecretCursor, SecretSummary, WrappedSecretKey};
use crate::{
    AuditFilter, BucketSettle, BucketTake, BudgetWindow, Cancelled, EventFilter, Fence, Inserted,
    LeaderLease, Listener, Overdue, PoolStats, Requeued, Reservation, StoreResult, TaskFilter,
    Topology, UsageFilter,
};
use async_trait::async_trait;
use flotilla_core::Timestamp;
use flotilla_core::agent::{AgentInstance, AgentStatus};
use flotilla_core::audit::{AuditEntry, MacKey, NewAuditEntry};
use flotilla_core::auth::ApiKeyRecord;
use flotilla_core::budget::{Budget, Period, Spend};
use flotilla_core::event::{Event, NewEvent};
use flotilla_core::id::{AgentId, TaskId, TenantId};
use flotilla_core::money::Money;
use flotilla_core::rate::Rate;
use flotilla_core::task::{AttemptEnd, NewTask, Task, TaskStatus};
use flotilla_core::tenant::Tenant;
use flotilla_core::usage::{DailyUsage, UsageRecord};
use std::collections::BTreeMap;
use std::time::Duration;

/// The store as a whole: its topology, connections and schema.
#[async_trait]
pub trait LifecycleStore: Send + Sync + 'static {
    /// How many control planes may share this store: one process ([`Topology::Embedded`],
    /// SQLite) or several replicas ([`Topology::Shared`], PostgreSQL).
    fn topology(&self) -> Topology;

    /// The connection pools' state now.
    fn pool_stats(&self) -> PoolStats;

    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;
    /// Ok when the database answers and every embedded migration is applied.
    async fn ready(&self) -> StoreResult<bool>;
}

/// Tenants, API keys and the audit log.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
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

    /// Appends entries to the chain, in order, MAC'd with `key`, and returns them chained.
    async fn append_audit(
        &self,
        entries: &[NewAuditEntry],
        key: &MacKey,
    ) -> StoreResult<Vec<AuditEntry>>;
    /// The newest entry.
    async fn audit_head(&self) -> StoreResult<Option<AuditEntry>>;
    /// The last entry that existed, plain-hashed, when the log began to be MAC'd (0: none).
    async fn audit_legacy_through(&self) -> StoreResult<i64>;
    /// The newest entry written before `before`.
    async fn last_audit_before(&self, before: Timestamp) -> StoreResult<Option<AuditEntry>>;
    /// In one transaction: appends `record` (the prune's own entry, MAC'd with `key`) and
    /// deletes the entries up to `through`. Returns how many were deleted.
    async fn prune_audit(
        &self,
        through: i64,
        record: &NewAuditEntry,
        key: &MacKey,
    ) -> StoreResult<u64>;
    async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>>;
}

/// Tasks, their claims, leases and attempts.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
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
    /// Claims up to `limit` queued tasks of `agent_type` and `tenant` whose `not_before` has
    /// passed, in order of priority (high first) then age (old first): each becomes `running`,
    /// its `attempt` grows by one, `started_at` is set if unset, and it gets the lease (`owner`,
    /// `lease_expires_at`). A task is never returned to two concurrent claims. The dispatcher
    /// decides how many each tenant gets (fair share, docs/design.md §4).
    async fn claim_tasks(
        &self,
        agent_type: &str,
        tenant: TenantId,
        limit: u32,
        owner: &str,
        lease_expires_at: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Vec<Task>>;
    /// The tenants with a task of `agent_type` queued whose `not_before` has passed, in id
    /// order, at most `limit`.
    async fn queued_tenants(
        &self,
        agent_type: &str,
        now: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<TenantId>>;
    /// How many tasks `tenant` has queued (of every type), counted up to `cap`.
    async fn count_queued(&self, tenant: TenantId, cap: u64) -> StoreResult<u64>;
    /// Records the end of attempts in one transaction. Each end applies only if the task is still
    /// `running` with that attempt number (otherwise it was cancelled or its lease expired and it
    /// was claimed again) — the attempt row is recorded either way. Returns, per end, the updated
    /// task (without its attempts: this is the hot path) when it applied and `None` when it did
    /// not.
    async fn finish_attempts(&self, ends: &[AttemptEnd]) -> StoreResult<Vec<Option<Task>>>;
    /// Extends the lease of every running task owned by `owner`.
    async fn renew_leases(&self, owner: &str, lease_expires_at: Timestamp) -> StoreResult<u64>;
    /// Returns running tasks whose lease expired before `now` to `queued` (available at once),
    /// recording a `lost` attempt for each. A task whose attempts were lost `max_lost` times,
    /// this one included, fails instead, with an error that says so (a task that kills every
    /// control plane that runs it must end).
    ///
    /// With a `fence`, only while that term of leadership holds: the lease row is checked and
    /// share-locked in the same transaction, so no other control plane can take the lease while
    /// it runs, and a leader whose term ended (it paused past its lease, say) requeues nothing.
    async fn requeue_expired(
        &self,
        now: Timestamp,
        fence: Option<&Fence>,
        max_lost: u32,
    ) -> StoreResult<Vec<Requeued>>;
    /// Fails the queued tasks `overdue` describes, at `now`; returns their ids and types. A task
    /// claimed or cancelled meanwhile is left alone.
    async fn fail_overdue(
        &self,
        overdue: &Overdue<'_>,
        now: Timestamp,
    ) -> StoreResult<Vec<(TaskId, String)>>;
    /// Number of tasks per status (all tenants): every status in lifecycle order
    /// ([`TaskStatus::ALL`]), those without tasks with 0.
    async fn task_counts_by_status(&self) -> StoreResult<Vec<(TaskStatus, u64)>>;
    /// Number of queued tasks per agent type, of every tenant or of `tenant`.
    async fn queued_by_type(&self, tenant: Option<TenantId>) -> StoreResult<BTreeMap<String, u64>>;
}

/// Agent instances and the fleet's event log.
#[async_trait]
pub trait FleetStore: Send + Sync + 'static {
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

    /// Records events in one transaction, numbering them in order with ids greater than every
    /// id recorded before (pruned ones included). Once an id is visible to `list_events`, no
    /// event with a smaller id appears later, so following the `after` cursor misses nothing.
    async fn insert_events(&self, events: &[NewEvent]) -> StoreResult<()>;
    /// With `after`, the first `limit` matching events after it; without, the latest `limit`
    /// matching events. Either way in ascending id order.
    async fn list_events(&self, filter: &EventFilter) -> StoreResult<Vec<Event>>;
    /// Deletes all but the newest `keep` events; returns how many it deleted.
    async fn prune_events(&self, keep: u64) -> StoreResult<u64>;
}

/// The vault's sealed secrets (bytes only: sealing happens in the server).
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
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
}

/// The model-usage ledger, budgets and rate-limit buckets.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
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
}

/// State shared between control planes: the alert engine's silences and board, leader
/// leases and notifications (docs/design.md §9, §11).
#[async_trait]
pub trait CoordinationStore: Send + Sync + 'static {
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
    /// Listens to [`notify`](CoordinationStore::notify) from every control plane on this database,
    /// this one's included; `None` on SQLite.
    async fn listen(&self) -> StoreResult<Option<Listener>>;
}

/// Everything Flotilla persists: every capability together. Implemented for every type that
/// implements them all; call sites on a [`crate::DynStore`] need no trait imports, since a trait
/// object's supertrait methods resolve without them.
pub trait Store:
    LifecycleStore + AccessStore + TaskStore + FleetStore + SecretStore + UsageStore + CoordinationStore
{
}

impl<T> Store for T where
    T: LifecycleStore
        + AccessStore
        + TaskStore
        + FleetStore
        + SecretStore
        + UsageStore
        + CoordinationStore
{
}

#[cfg(test)]
mod tests {
    use super::CoordinationStore;
    use std::sync::Arc;

    /// A `DynStore` upcasts to a single capability, so code that needs one can take it (and a
    /// test can hand it a fake).
    #[test]
    fn a_store_upcasts_to_one_capability() {
        fn coordination(store: crate::DynStore) -> Arc<dyn CoordinationStore> {
            store
        }
        let _ = coordination;
    }
}
