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

use crate::app::AppState;
use flotilla_core::event::{EventKind, NewEvent};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The lease's name in the store.
pub const LEASE: &str = "control-plane";

/// Every control plane also holds a lease of its own, `replica:<owner>`, renewed with the
/// leader lease: the live ones tell how many control planes share the instances' capacity.
pub const PRESENCE: &str = "replica:";

/// This control plane's view of the leadership.
pub struct Leadership {
    /// `Some(generation)` while this control plane leads.
    leading: watch::Sender<Option<i64>>,
    /// Who leads, as last seen (owner name), for `/v1/system`.
    leader: std::sync::Mutex<Option<String>>,
}

impl Default for Leadership {
    fn default() -> Self {
        Self {
            leading: watch::Sender::new(None),
            leader: std::sync::Mutex::new(None),
        }
    }
}

impl Leadership {
    /// True while this control plane leads.
    pub fn is_leader(&self) -> bool {
        self.leading.borrow().is_some()
    }

    /// The generation of this control plane's term, while it leads.
    pub fn generation(&self) -> Option<i64> {
        *self.leading.borrow()
    }

    /// The leader as last seen (its owner name), if any.
    pub fn leader(&self) -> Option<String> {
        self.leader.lock().ok().and_then(|l| l.clone())
    }

    fn seen(&self, holder: &str) {
        if let Ok(mut leader) = self.leader.lock()
            && leader.as_deref() != Some(holder)
        {
            *leader = Some(holder.to_owned());
        }
    }
}

/// Claims and renews the lease until `shutdown`, then hands it over.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let ttl = state.config.leader_lease;
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
                state.store.claim_lease(LEASE, &state.owner, now, until),
            )
            .await;
            count_replicas(&state, now, until).await;
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
                step_down(&state, ran_out(&state)).await;
                continue;
            }
        };
        match claimed {
            Ok(Ok(lease)) => {
                state.leadership.seen(&lease.holder);
                if lease.holder == *state.owner {
                    term_ends = Some(started + ttl);
                    if state.leadership.generation() != Some(lease.generation) {
                        state
                            .leadership
                            .leading
                            .send_replace(Some(lease.generation));
                        state.metrics.leader.set(1);
                        announce(
                            &state,
                            format!(
                                "control plane {} leads (generation {})",
                                state.owner, lease.generation
                            ),
                        )
                        .await;
                    }
                } else if term_ends.take().is_some() {
                    step_down(
                        &state,
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
            () = tokio::time::sleep_until(deadline.into()) => {}
        }
        if term_ends.is_some_and(|end| Instant::now() >= end) {
            term_ends = None;
            step_down(&state, ran_out(&state)).await;
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        state.store.release_lease(
            &format!("{PRESENCE}{}", state.owner),
            &state.owner,
            state.clock.now(),
        ),
    )
    .await;
    if term_ends.is_some() {
        step_down(
            &state,
            format!("control plane {} hands over: shutting down", state.owner),
        )
        .await;
        let release = state
            .store
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
        Some(end) => tokio::time::sleep_until(end.into()).await,
        None => std::future::pending().await,
    }
}

fn ran_out(state: &AppState) -> String {
    format!(
        "control plane {} no longer leads: its lease ran out before it could renew it (is the database reachable?)",
        state.owner
    )
}

/// Renews this control plane's presence and tells the registry how many are live.
async fn count_replicas(
    state: &AppState,
    now: flotilla_core::Timestamp,
    until: flotilla_core::Timestamp,
) {
    // One control plane runs on SQLite: no count to keep (and a previous start killed without
    // releasing its presence must not halve this one's shares until it expires).
    if !state.store.topology().is_shared() {
        state.metrics.replicas.set(1);
        return;
    }
    let name = format!("{PRESENCE}{}", state.owner);
    let counted = async {
        state
            .store
            .claim_lease(&name, &state.owner, now, until)
            .await?;
        state
            .store
            .live_leases(PRESENCE, now, now - chrono::Duration::hours(1))
            .await
    };
    match tokio::time::timeout(Duration::from_secs(2), counted).await {
        Ok(Ok(n)) => {
            let n = u32::try_from(n).unwrap_or(u32::MAX).max(1);
            state.registry.set_replicas(n);
            state.limits.set_replicas(n);
            state.metrics.replicas.set(i64::from(n));
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "Could not count the control planes"),
        Err(_) => tracing::debug!("Counting the control planes timed out"),
    }
}

async fn step_down(state: &AppState, message: String) {
    state.leadership.leading.send_replace(None);
    state.metrics.leader.set(0);
    announce(state, message).await;
}

/// Records a change of leader as an event, written at once rather than with the next batch:
/// a leader killed right after taking over must still leave its event behind.
async fn announce(state: &AppState, message: String) {
    tracing::info!(event = %EventKind::Leader, owner = %state.owner, "{message}");
    let event = NewEvent {
        at: state.clock.now(),
        kind: EventKind::Leader,
        agent_type: "*".to_owned(),
        agent_id: None,
        message,
    };
    let write = state.store.insert_events(std::slice::from_ref(&event));
    match tokio::time::timeout(Duration::from_secs(2), write).await {
        Ok(Ok(())) => {}
        // The database may be what ended the term: queue it with the other events.
        _ => state.events.queue(event),
    }
}

/// Runs `job` while this control plane leads: started when it becomes the leader, cancelled
/// (and awaited) when it stops being it, again on the next term; until `shutdown`.
pub async fn singleton<F, Fut>(state: AppState, shutdown: CancellationToken, job: F)
where
    F: Fn(AppState, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut leading = state.leadership.leading.subscribe();
    loop {
        // Wait to lead.
        tokio::select! {
            () = shutdown.cancelled() => return,
            led = leading.wait_for(Option::is_some) => if led.is_err() { return },
        }
        let term = shutdown.child_token();
        let running = tokio::spawn(job(state.clone(), term.clone()));
        tokio::select! {
            () = shutdown.cancelled() => {}
            _ = leading.wait_for(Option::is_none) => {}
        }
        term.cancel();
        if let Err(e) = running.await {
            tracing::error!(error = %e, "A singleton loop failed");
        }
    }
}
