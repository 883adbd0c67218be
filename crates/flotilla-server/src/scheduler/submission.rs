//! A submission, as the scheduler takes it: when an instance that may run the task has a free
//! slot and nothing of its type waits in the queue, the slot is taken before the task is written
//! and the task is written already claimed — it starts without a trip through the queue
//! (docs/design.md §4). Otherwise it is queued for the dispatchers.

use crate::fleet::registry::Slot;
use crate::scheduler::Scheduler;
use crate::scheduler::dispatcher::{release_slot, spawn_attempt};
use crate::scheduler::intake::IntakeError;
use crate::telemetry::metrics::Metrics;
use flotilla_core::task::{Lease, NewTask};
use flotilla_store::Inserted;
use std::sync::Arc;

/// Writes `task` (in the intake's next group commit) and, when a slot was free for it, starts
/// its first attempt. The slot is used only if this submission created the task.
pub(crate) async fn submit(
    state: &Arc<Scheduler>,
    mut task: NewTask,
) -> Result<Inserted, IntakeError> {
    let slot = claim_at_submission(state, &mut task);
    let inserted = state.intake.submit(task).await;
    match (&inserted, slot) {
        (Ok(Inserted::Created(task)), Some(slot)) => {
            state
                .metrics
                .claims
                .get_or_create(&Metrics::agent_type(&task.agent_type))
                .inc();
            spawn_attempt(state, task.clone(), slot)
        }
        (_, Some(slot)) => release_slot(state, &slot).await,
        (_, None) => {}
    }
    inserted
}

/// When an instance of the type has a free slot and nothing of the type waits in the queue, the
/// task is claimed in the same transaction that stores it: one store transaction and one
/// dispatcher wake-up fewer on its way to the agent. Otherwise it is queued as usual, so queued
/// tasks (and their priorities) always go first.
fn claim_at_submission(state: &Scheduler, task: &mut NewTask) -> Option<Slot> {
    if state.shutdown.is_cancelled() || state.wakers.get(&task.agent_type).maybe_queued() {
        return None;
    }
    let slot = state
        .registry
        .acquire(&task.agent_type, task.tenant_id, None, task.complexity)?;
    let ttl = chrono::Duration::from_std(state.config.scheduler.lease_ttl)
        .unwrap_or(chrono::Duration::MAX);
    task.claim = Some(Lease {
        owner: state.owner.to_string(),
        expires_at: task.created_at + ttl,
    });
    Some(slot)
}
