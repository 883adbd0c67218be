//! Leadership among control planes on one database (docs/design.md §9). Every control plane claims
//! the lease `control-plane` every third of `[database] leader_lease_ms`; the one that holds it
//! runs the singleton loops (the autoscaler, the alert engine, the re-queueing of expired task
//! leases, the prunes), the others stand by and take over when its lease ends.
//!
//! Never two at once: a leader counts its lease from *before* the claim that granted it and
//! steps down (stops its singleton loops) as soon as that time has passed without a renewal —
//! when the database is unreachable, say — while another control plane can only take the lease
//! after it has ended in the database, which is later. Each term has a generation, one more
//! than the last, carried by the `leader` events. On SQLite the one control plane always leads.

use crate::clock::Clock;
use crate::fleet::events::EventSink;
use crate::leadership::{LEASE, Leadership, PRESENCE};
use crate::telemetry::metrics::Metrics;
use flotilla_core::event::{EventKind, NewEvent};
use flotilla_store::{CoordinationStore, FleetStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the leader loop needs: the lease store, this control plane's name, and where it tells
/// what it sees. Time is tokio's (`Instant`s and sleeps), so tests can pause it.
pub struct Leader {
    /// Where the leases live.
    pub leases: Arc<dyn CoordinationStore>,
    /// Where a change of leader is recorded at once.
    pub announcements: Arc<dyn FleetStore>,
    /// True when several control planes may share the store (PostgreSQL): only then are they
    /// counted.
    pub shared_store: bool,
    /// This process's lease owner name (unique per start).
    pub owner: Arc<str>,
    /// `[database] leader_lease_ms`.
    pub ttl: Duration,
    pub clock: Arc<dyn Clock>,
    /// Written by this loop: whether and in which generation this control plane leads.
    pub leadership: Arc<Leadership>,
    pub metrics: Arc<Metrics>,
    /// Where a change of leader is recorded when the store cannot take it at once.
    pub events: EventSink,
    /// Told how many control planes are live, whenever they are counted.
    pub on_replicas: Box<dyn Fn(u32) + Send + Sync>,
}

/// Claims and renews the lease until `shutdown`, then hands it over.
pub async fn run(state: Leader, shutdown: CancellationToken) {
    let state = &state;
    let ttl = state.ttl;
    let period = ttl / 3;
    // A leader's term ends this long after the start of its last successful claim.
    let mut term_ends: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let now = state.clock.now();
        let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let round = async {
            let claimed = tokio::time::timeout(
                period,
                state.leases.claim_lease(LEASE, &state.owner, now, until),
            )
            .await;
            count_replicas(state, now, until).await;
            claimed
        };
        // A store that hangs must not stretch a term: when it ends while the claim (or the
        // count) is still pending, this control plane steps down then, not when the store
        // answers or the timeouts run out (another control plane may lead by then).
        let claimed = tokio::select! {
            () = shutdown.cancelled() => break,
            claimed = round => claimed,
            () = term_end(term_ends) => {
                term_ends = None;
                step_down(state, ran_out(state)).await;
                continue;
            }
        };
        match claimed {
            Ok(Ok(lease)) => {
                state.leadership.seen(&lease.holder);
                if lease.holder == *state.owner {
                    term_ends = Some(started + ttl);
                    if state.leadership.generation() != Some(lease.generation) {
                        // Recorded before this replica acts or says it leads, so whoever sees
                        // it lead finds the event, even if it is killed at once.
                        announce(
                            state,
                            format!(
                                "control plane {} leads (generation {})",
                                state.owner, lease.generation
                            ),
                        )
                        .await;
                        state
                            .leadership
                            .leading
                            .send_replace(Some(lease.generation));
                        state.metrics.leader.set(1);
                    }
                } else if term_ends.take().is_some() {
                    step_down(
                        state,
                        format!(
                            "control plane {} no longer leads: {} holds the lease (generation {})",
                            state.owner, lease.holder, lease.generation
                        ),
                    )
                    .await;
                }
            }
            Ok(Err(e)) => {
                state.metrics.store_errors.inc();
                tracing::warn!(error = %e, "Could not claim the leader lease");
            }
            Err(_) => tracing::warn!(
                timeout_ms = period.as_millis() as u64,
                "Claiming the leader lease timed out"
            ),
        }
        // Sleep until the next claim, but step down the moment the term ends unrenewed.
        let next = started + period;
        let deadline = match term_ends {
            Some(end) if end < next => end,
            _ => next,
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => {}
        }
        if term_ends.is_some_and(|end| Instant::now() >= end) {
            term_ends = None;
            step_down(state, ran_out(state)).await;
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        state.leases.release_lease(
            &format!("{PRESENCE}{}", state.owner),
            &state.owner,
            state.clock.now(),
        ),
    )
    .await;
    if term_ends.is_some() {
        step_down(
            state,
            format!("control plane {} hands over: shutting down", state.owner),
        )
        .await;
        let release = state
            .leases
            .release_lease(LEASE, &state.owner, state.clock.now());
        match tokio::time::timeout(Duration::from_secs(2), release).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "Could not release the leader lease"),
            Err(_) => tracing::warn!("Releasing the leader lease timed out"),
        }
    }
}

/// Resolves when a term that ends at `end` is over; never without a term.
async fn term_end(end: Option<Instant>) {
    match end {
        Some(end) => tokio::time::sleep_until(end).await,
        None => std::future::pending().await,
    }
}

fn ran_out(state: &Leader) -> String {
    format!(
        "control plane {} no longer leads: its lease ran out before it could renew it (is the database reachable?)",
        state.owner
    )
}

/// Renews this control plane's presence and tells the registry how many are live.
async fn count_replicas(
    state: &Leader,
    now: flotilla_core::Timestamp,
    until: flotilla_core::Timestamp,
) {
    // One control plane runs on SQLite: no count to keep (and a previous start killed without
    // releasing its presence must not halve this one's shares until it expires).
    if !state.shared_store {
        state.metrics.replicas.set(1);
        return;
    }
    let name = format!("{PRESENCE}{}", state.owner);
    let counted = async {
        state
            .leases
            .claim_lease(&name, &state.owner, now, until)
            .await?;
        state
            .leases
            .live_leases(PRESENCE, now, now - chrono::Duration::hours(1))
            .await
    };
    match tokio::time::timeout(Duration::from_secs(2), counted).await {
        Ok(Ok(n)) => {
            let n = u32::try_from(n).unwrap_or(u32::MAX).max(1);
            (state.on_replicas)(n);
            state.metrics.replicas.set(i64::from(n));
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "Could not count the control planes"),
        Err(_) => tracing::debug!("Counting the control planes timed out"),
    }
}

async fn step_down(state: &Leader, message: String) {
    state.leadership.leading.send_replace(None);
    state.metrics.leader.set(0);
    announce(state, message).await;
}

/// Records a change of leader as an event, written at once rather than with the next batch:
/// a leader killed right after taking over must still leave its event behind. A new leader's
/// event is written before it leads; one that took over 2 s to write is queued instead.
async fn announce(state: &Leader, message: String) {
    tracing::info!(event = %EventKind::Leader, owner = %state.owner, "{message}");
    let event = NewEvent {
        at: state.clock.now(),
        kind: EventKind::Leader,
        agent_type: "*".to_owned(),
        agent_id: None,
        message,
        tenant: None,
    };
    let write = state
        .announcements
        .insert_events(std::slice::from_ref(&event));
    match tokio::time::timeout(Duration::from_secs(2), write).await {
        Ok(Ok(())) => {}
        // The database may be what ended the term: queue it with the other events.
        _ => state.events.queue(event),
    }
}
