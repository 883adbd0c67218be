//! The loop that marks instances failed when their heartbeats stop (DESIGN.md §5). A failed
//! instance gets no new work; its in-flight attempts fail on their own deadline and are retried
//! elsewhere. It returns to rotation when it heartbeats again.

use crate::app::AppState;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs until `shutdown`, checking every second.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let timeout = chrono::Duration::from_std(state.config.scheduler.heartbeat_timeout)
        .unwrap_or(chrono::Duration::MAX);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for agent in state.registry.expire_heartbeats(state.clock.now(), timeout) {
            tracing::warn!(agent_id = %agent.id, agent_type = %agent.agent_type, last_heartbeat = %agent.last_heartbeat, "Instance failed: heartbeats stopped");
            if let Err(e) = state
                .store
                .set_agent_status(agent.id, flotilla_core::agent::AgentStatus::Failed)
                .await
            {
                tracing::warn!(agent_id = %agent.id, error = %e, "Could not record the failed status");
            }
        }
    }
}
