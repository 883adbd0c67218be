//! Active health checks (DESIGN.md §5): `GET {url}/health` on every instance at its pool's
//! interval, with a timeout; the registry applies the pool's thresholds (hysteresis).

use crate::app::AppState;
use crate::telemetry::metrics::AgentRequestLabels;
use flotilla_core::id::AgentId;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often the loop looks for checks that are due.
const TICK: Duration = Duration::from_millis(250);
/// Most checks in flight at once.
const MAX_CONCURRENT: usize = 256;

/// Runs until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mut checks: JoinSet<(AgentId, Result<(), String>)> = JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            Some(Ok((id, result))) = checks.join_next(), if !checks.is_empty() => {
                let (ok, detail) = match &result {
                    Ok(()) => (true, ""),
                    Err(e) => (false, e.as_str()),
                };
                if let Some(agent) = state.registry.get(id) {
                    state
                        .metrics
                        .agent_requests
                        .get_or_create(&AgentRequestLabels {
                            agent_type: agent.agent_type,
                            status: if ok { "success" } else { "error" }.to_owned(),
                            endpoint: "health".to_owned(),
                        })
                        .inc();
                }
                state.registry.record_check(id, ok, detail, state.clock.now());
                continue;
            }
        }
        for (id, url, timeout) in state.registry.due_checks(state.clock.now()) {
            if checks.len() >= MAX_CONCURRENT {
                break;
            }
            let http = state.http.clone();
            checks.spawn(async move { (id, check(&http, &url, timeout).await) });
        }
    }
}

/// One check: healthy when `/health` answers 2xx within the timeout.
async fn check(http: &reqwest::Client, url: &str, timeout: Duration) -> Result<(), String> {
    let response = http
        .get(format!("{url}/health"))
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {} ms", timeout.as_millis())
            } else {
                format!("unreachable: {e}")
            }
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("/health answered HTTP {}", status.as_u16()))
    }
}
