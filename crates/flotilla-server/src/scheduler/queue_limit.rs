//! The per-tenant queue limit (`[scheduler.fair_share] max_queued_per_tenant`): a submission that
//! would take a tenant past it is refused with `429 queue_full`, so one tenant cannot fill the
//! database or push its backlog into everyone's way (docs/design.md §4).
//!
//! Counting a tenant's queue on every submission would cost a scan of up to the limit; instead
//! each tenant's count is read from the store at most once per [`RECOUNT`] and the submissions
//! this process admitted since are added to it. The edges: submissions in flight while the store
//! counts (at most a group commit's worth) and, with replicas, what the others admitted within one
//! [`RECOUNT`] may pass the limit; and a tenant whose queue just drained may be refused for up to
//! one [`RECOUNT`].

use flotilla_core::Timestamp;
use flotilla_core::id::TenantId;
use flotilla_store::{DynStore, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a tenant's count from the store is used before it is read again.
const RECOUNT: chrono::Duration = chrono::Duration::seconds(1);

/// A submission refused because its tenant's queue is full.
#[derive(Debug, thiserror::Error)]
#[error(
    "tenant {tenant} has {queued} tasks queued, its limit (scheduler.fair_share.max_queued_per_tenant is {limit}); retry when some have started"
)]
pub(crate) struct QueueFull {
    pub tenant: TenantId,
    pub queued: u64,
    pub limit: u64,
}

/// What this process knows of one tenant's queue.
#[derive(Clone, Copy, Debug, Default)]
struct Known {
    /// The count the store gave (up to the limit), and when it was asked.
    counted: u64,
    counted_at: Option<Timestamp>,
    /// Submissions this process admitted, ever, and how many of them it had admitted when the
    /// count came back (taken as in the count).
    admitted: u64,
    admitted_at_count: u64,
}

impl Known {
    fn stale(&self, now: Timestamp) -> bool {
        self.counted_at.is_none_or(|at| now - at >= RECOUNT)
    }

    fn queued(&self) -> u64 {
        self.counted
            .saturating_add(self.admitted.saturating_sub(self.admitted_at_count))
    }
}

/// The counts of the tenants that submitted through this process.
#[derive(Default)]
pub(crate) struct QueueLimits {
    known: Mutex<HashMap<TenantId, Known>>,
}

impl QueueLimits {
    /// Admits one more queued task of `tenant`, or refuses it when the tenant has `limit`
    /// queued already.
    pub(crate) async fn admit(
        &self,
        store: &DynStore,
        tenant: TenantId,
        limit: u64,
        now: Timestamp,
    ) -> Result<Result<(), QueueFull>, StoreError> {
        let stale = self.lock().entry(tenant).or_default().stale(now);
        if stale {
            let counted = store.count_queued(tenant, limit).await?;
            let mut known = self.lock();
            let entry = known.entry(tenant).or_default();
            // What was admitted until now is taken as counted: submissions admitted but not yet
            // written when the store counted are missed, so concurrent submissions (at most a
            // group commit's worth) may pass the limit — never refused below it.
            entry.counted = counted;
            entry.counted_at = Some(now);
            entry.admitted_at_count = entry.admitted;
        }
        let mut known = self.lock();
        let entry = known.entry(tenant).or_default();
        if entry.queued() >= limit {
            return Ok(Err(QueueFull {
                tenant,
                queued: entry.queued(),
                limit,
            }));
        }
        entry.admitted += 1;
        Ok(Ok(()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Known>> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
