//! Active health checks (docs/design.md §5): `GET {url}/health` on every instance at its pool's
//! interval, with a timeout; the registry applies the pool's thresholds (hysteresis).
//!
//! A check goes through the agent clients (egress policy, no redirects) and reads at most
//! [`MAX_HEALTH_BYTES`] of the reply. Its detail reaches fleet events, which every viewer reads:
//! it says what happened (status, reason, rule) but never quotes the reply nor names the URL.

use crate::agent_clients::transport_failure;
use crate::agent_clients::{AgentClients, ReadError, read_capped};
use crate::fleet::Fleet;
use crate::telemetry::metrics::AgentRequestLabels;
use flotilla_core::agent_url;
use flotilla_core::id::{AgentId, TenantId};
use flotilla_core::retry::DispatchFailure;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often the loop looks for checks that are due.
const TICK: Duration = Duration::from_millis(250);
/// Most checks in flight at once.
const MAX_CONCURRENT: usize = 256;
/// Largest `/health` reply read; a longer one fails the check.
pub(crate) const MAX_HEALTH_BYTES: usize = 64 * 1024;

/// Runs until `shutdown`.
pub(crate) async fn run(fleet: Fleet, shutdown: CancellationToken) {
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
                if let Some(agent) = fleet.registry.get(id) {
                    fleet
                        .metrics
                        .agent_requests
                        .get_or_create(&AgentRequestLabels {
                            agent_type: agent.agent_type,
                            status: if ok { "success" } else { "error" }.to_owned(),
                            endpoint: "health".to_owned(),
                        })
                        .inc();
                }
                fleet.registry.record_check(id, ok, detail, fleet.clock.now());
                continue;
            }
        }
        for (id, owner, url, timeout) in fleet.registry.due_checks(fleet.clock.now()) {
            if checks.len() >= MAX_CONCURRENT {
                break;
            }
            let clients = Arc::clone(&fleet.agents);
            checks.spawn(async move { (id, check(&clients, owner, &url, timeout).await) });
        }
    }
}

/// One check: healthy when `/health` answers 2xx within the timeout with a reply of at most
/// [`MAX_HEALTH_BYTES`].
async fn check(
    clients: &AgentClients,
    owner: Option<TenantId>,
    url: &str,
    timeout: Duration,
) -> Result<(), String> {
    let url = reqwest::Url::parse(url)
        .ok()
        .and_then(|base| agent_url::endpoint(&base, "health"))
        .ok_or_else(|| "the instance's URL has no path".to_owned())?;
    clients
        .check_host(owner, &url)
        .map_err(|refusal| unreachable(&DispatchFailure::Refused(refusal), timeout))?;
    let mut response = clients
        .for_owner(owner)
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| unreachable(&transport_failure(e), timeout))?;
    let status = response.status();
    if status.is_redirection() {
        return Err(format!(
            "/health answered HTTP {}, a redirect: redirects are not followed",
            status.as_u16()
        ));
    }
    if !status.is_success() {
        return Err(format!("/health answered HTTP {}", status.as_u16()));
    }
    match read_capped(&mut response, MAX_HEALTH_BYTES).await {
        Ok(_) => Ok(()),
        Err(ReadError::TooLarge { limit }) => Err(format!(
            "/health answered more than the limit of {limit} bytes"
        )),
        Err(ReadError::Transport(e)) => Err(unreachable(&transport_failure(e), timeout)),
    }
}

/// What a failed request says in events: the reason or rule, never the URL.
fn unreachable(failure: &DispatchFailure, timeout: Duration) -> String {
    match failure {
        DispatchFailure::Timeout => format!("no answer within {} ms", timeout.as_millis()),
        other => other.describe_for(false),
    }
}
