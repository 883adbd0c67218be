//! Leases: this process renews the leases of the tasks it runs, and returns any expired lease's
//! task to the queue — a replica (or an earlier run of this process) that died mid-attempt —
//! unless it lost too many attempts. The leader also fails queued tasks past their queue
//! timeout (`overdue`).

use crate::scheduler::Scheduler;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs until `shutdown`: renews every third of the lease time and reaps expired leases.
pub(crate) async fn run(state: Arc<Scheduler>, shutdown: CancellationToken) {
    let ttl = state.config.scheduler.lease_ttl;
    let period = (ttl / 3).min(Duration::from_secs(1));
    let overdue = super::overdue::groups(&state.config);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = state.clock.now();
        let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let started = std::time::Instant::now();
        if let Err(e) = state.store.renew_leases(&state.owner, until).await {
            tracing::warn!(error = %e, "Could not renew leases");
        }
        state
            .metrics
            .observe_store("renew_leases", started.elapsed());
        // Re-queueing is the leader's job (one control plane on SQLite always leads), fenced by
        // its term: the store requeues nothing once the term has ended in the database.
        let Some(generation) = state.leadership.generation() else {
            continue;
        };
        let fence = flotilla_store::Fence {
            lease: crate::leadership::LEASE.to_owned(),
            holder: state.owner.to_string(),
            generation,
        };
        let started = std::time::Instant::now();
        let max_lost = state.config.scheduler.max_lost_attempts;
        let requeued = state
            .store
            .requeue_expired(now, Some(&fence), max_lost)
            .await;
        state
            .metrics
            .observe_store("requeue_expired", started.elapsed());
        match requeued {
            Ok(requeued) => {
                state.metrics.leases_expired.inc_by(requeued.len() as u64);
                for task in requeued {
                    // Its attempt is over, wherever it still runs: refuse its token here now.
                    state.attempts.ended(task.task_id, task.attempt);
                    if task.failed {
                        tracing::warn!(task_id = %task.task_id, attempt = task.attempt, max_lost, "Lease expired; task failed: too many lost attempts");
                        state.waiters.wake(task.task_id);
                        continue;
                    }
                    tracing::warn!(task_id = %task.task_id, attempt = task.attempt, "Lease expired; task re-queued");
                    state.ensure(&task.agent_type);
                    state.wakers.task_queued(&task.agent_type);
                }
            }
            Err(e) => {
                state.metrics.store_errors.inc();
                tracing::warn!(error = %e, "Could not re-queue expired leases");
            }
        }
        super::overdue::sweep(&state, &overdue).await;
    }
}
