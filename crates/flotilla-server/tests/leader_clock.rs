//! The leader loop on a paused clock, against a fake lease store (docs/design.md §9): a leader
//! whose claims hang steps down — and its singleton loops stop — exactly when its term ends,
//! which is one lease after the start of its last successful claim; not when the store answers
//! or a timeout runs out. Time is tokio's, advanced by the test: the figures are exact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use flotilla_core::Timestamp;
use flotilla_core::agent::{AgentInstance, AgentStatus};
use flotilla_core::event::{Event, NewEvent};
use flotilla_core::id::AgentId;
use flotilla_server::leader::{Leader, run};
use flotilla_server::leadership::{Leadership, singleton};
use flotilla_store::{
    CoordinationStore, EventFilter, FleetStore, LeaderLease, Listener, StoreResult,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(3);

/// Leases that are granted at once, until `hang` is set: from then on every claim and every
/// count of the replicas waits forever, as a store behind a lock or a dead connection does.
#[derive(Default)]
struct HangingLeases {
    hang: AtomicBool,
    /// When each claim started (tokio's clock).
    claims: Mutex<Vec<Instant>>,
}

impl HangingLeases {
    async fn maybe_hang(&self) {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl CoordinationStore for HangingLeases {
    async fn put_silence(&self, _: uuid::Uuid, _: Timestamp, _: &str) -> StoreResult<()> {
        Ok(())
    }
    async fn delete_silence(&self, _: uuid::Uuid) -> StoreResult<Option<String>> {
        Ok(None)
    }
    async fn list_silences(&self, _: Timestamp) -> StoreResult<Vec<String>> {
        Ok(Vec::new())
    }
    async fn put_board(&self, _: &str, _: &str, _: Timestamp) -> StoreResult<()> {
        Ok(())
    }
    async fn get_board(&self, _: &str) -> StoreResult<Option<(String, Timestamp)>> {
        Ok(None)
    }
    async fn claim_lease(
        &self,
        _name: &str,
        holder: &str,
        _now: Timestamp,
        until: Timestamp,
    ) -> StoreResult<LeaderLease> {
        self.claims.lock().unwrap().push(Instant::now());
        self.maybe_hang().await;
        Ok(LeaderLease {
            holder: holder.to_owned(),
            generation: 1,
            expires_at: until,
        })
    }
    async fn release_lease(&self, _: &str, _: &str, _: Timestamp) -> StoreResult<bool> {
        Ok(true)
    }
    async fn live_leases(&self, _: &str, _: Timestamp, _: Timestamp) -> StoreResult<u64> {
        self.maybe_hang().await;
        Ok(1)
    }
    async fn notify(&self, _: &str) -> StoreResult<()> {
        Ok(())
    }
    async fn listen(&self) -> StoreResult<Option<Listener>> {
        Ok(None)
    }
}

/// Where the leader writes its announcements: accepted and dropped.
struct NoEvents;

#[async_trait]
impl FleetStore for NoEvents {
    async fn insert_agent(&self, _: &AgentInstance) -> StoreResult<()> {
        unimplemented!("the leader registers no agent")
    }
    async fn get_agent(&self, _: AgentId) -> StoreResult<Option<AgentInstance>> {
        unimplemented!("the leader reads no agent")
    }
    async fn list_agents(&self) -> StoreResult<Vec<AgentInstance>> {
        unimplemented!("the leader lists no agent")
    }
    async fn heartbeat_agent(
        &self,
        _: AgentId,
        _: u32,
        _: AgentStatus,
        _: Timestamp,
    ) -> StoreResult<bool> {
        unimplemented!("the leader sends no heartbeat")
    }
    async fn set_agent_status(&self, _: AgentId, _: AgentStatus) -> StoreResult<bool> {
        unimplemented!("the leader changes no agent")
    }
    async fn delete_agent(&self, _: AgentId) -> StoreResult<bool> {
        unimplemented!("the leader deletes no agent")
    }
    async fn insert_events(&self, _: &[NewEvent]) -> StoreResult<()> {
        Ok(())
    }
    async fn list_events(&self, _: &EventFilter) -> StoreResult<Vec<Event>> {
        unimplemented!("the leader reads no event")
    }
    async fn prune_events(&self, _: u64) -> StoreResult<u64> {
        unimplemented!("the leader prunes no event")
    }
}

/// Waits (on the paused clock) until `leading` is what `want` says; the instant it became so.
async fn until_leading(leadership: &Leadership, want: bool) -> Instant {
    let mut leading = leadership.watch();
    tokio::time::timeout(
        Duration::from_secs(60),
        leading.wait_for(|generation| generation.is_some() == want),
    )
    .await
    .unwrap_or_else(|_| panic!("leading never became {want}"))
    .unwrap();
    Instant::now()
}

#[tokio::test]
async fn a_leader_whose_claims_hang_steps_down_exactly_when_its_term_ends() {
    let leases = Arc::new(HangingLeases::default());
    let leadership = Arc::new(Leadership::default());
    let metrics = Arc::new(flotilla_server::telemetry::metrics::Metrics::new());
    // The event sink is only a queue here: its writer is not started.
    let dir = tempfile::tempdir().unwrap();
    let store: flotilla_store::DynStore = Arc::new(
        flotilla_store::SqliteStore::open(&dir.path().join("events.db"), 1)
            .await
            .unwrap(),
    );
    let (events, _writer) = flotilla_server::fleet::events::channel(
        store,
        metrics.clone(),
        100,
        leadership.clone(),
        CancellationToken::new(),
    );
    // The store is opened on the real clock (its pool's timeouts would fire at once on a paused
    // one); from here on time is the test's.
    tokio::time::pause();
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let leader = tokio::spawn(run(
        Leader {
            leases: leases.clone(),
            announcements: Arc::new(NoEvents),
            shared_store: true,
            owner: "the-leader".into(),
            ttl: TTL,
            clock: Arc::new(flotilla_server::clock::SystemClock),
            leadership: leadership.clone(),
            metrics,
            events,
            on_replicas: Box::new(|_| {}),
        },
        shutdown.clone(),
    ));
    // A singleton loop that records when its term was cancelled.
    let stopped: Arc<Mutex<Option<Instant>>> = Arc::default();
    let job = {
        let stopped = stopped.clone();
        move |term: CancellationToken| {
            let stopped = stopped.clone();
            async move {
                term.cancelled().await;
                *stopped.lock().unwrap() = Some(Instant::now());
            }
        }
    };
    let singleton = tokio::spawn(singleton(leadership.clone(), shutdown.clone(), job));

    let led_at = until_leading(&leadership, true).await;
    assert_eq!(
        led_at - start,
        Duration::ZERO,
        "the first claim is granted at once"
    );
    // Claims every third of the lease: at 0 s, 1 s and 2 s; the store hangs from 2.5 s on.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    leases.hang.store(true, Ordering::SeqCst);
    let last_granted = *leases.claims.lock().unwrap().last().unwrap();
    // (tokio's timer wakes on whole milliseconds, so each round may start up to 1 ms late.)
    let late = Duration::from_millis(5);
    assert!(
        last_granted - start >= Duration::from_secs(2)
            && last_granted - start <= Duration::from_secs(2) + late
    );

    let down_at = until_leading(&leadership, false).await;
    // The term ends one lease after the start of the last granted claim — not at the hung
    // claim's timeout (a third of the lease later) plus the replica count's (2 s more).
    let term = down_at - last_granted;
    assert!(
        term >= TTL && term <= TTL + Duration::from_millis(1),
        "stepped down {term:?} after the last granted claim; the lease is {TTL:?}"
    );
    // The singleton loop stopped at that instant too.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let stopped_at = stopped
        .lock()
        .unwrap()
        .expect("the singleton loop was not stopped");
    assert_eq!(stopped_at, down_at, "the singleton loop outlived the term");

    shutdown.cancel();
    leader.await.unwrap();
    singleton.await.unwrap();
}
