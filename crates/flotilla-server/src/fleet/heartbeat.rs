//! The sweeper of the fleet (docs/design.md §5), once a second: fails instances whose heartbeats
//! stopped (their in-flight attempts are cut short and re-queued for another instance), removes
//! instances failed for longer than `[fleet] failed_removal_ms`, and returns ejected instances to
//! rotation when their ejection time is over.

use crate::fleet::Fleet;
use flotilla_core::agent::AgentStatus;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs until `shutdown`.
pub(crate) async fn run(fleet: Fleet, shutdown: CancellationToken) {
    let timeout = chrono::Duration::from_std(fleet.config.scheduler.heartbeat_timeout)
        .unwrap_or(chrono::Duration::MAX);
    let removal = chrono::Duration::from_std(fleet.config.fleet.failed_removal)
        .unwrap_or(chrono::Duration::MAX);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = fleet.clock.now();
        for id in fleet.registry.expire_heartbeats(now, timeout) {
            if let Err(e) = fleet.store.set_agent_status(id, AgentStatus::Failed).await {
                tracing::warn!(agent_id = %id, error = %e, "Could not record the failed status");
            }
        }
        for id in fleet.registry.remove_failed(now, removal) {
            if let Err(e) = fleet.store.delete_agent(id).await {
                tracing::warn!(agent_id = %id, error = %e, "Could not delete the failed instance");
            }
        }
        fleet.registry.restore_ejected(now);
    }
}
