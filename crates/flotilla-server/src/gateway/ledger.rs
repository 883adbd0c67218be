//! The usage ledger's writer: every model call's [`UsageRecord`] is queued and written in
//! batches every `[gateway] usage_flush_ms`, and whatever is queued is written at shutdown. A
//! crash (SIGKILL, power loss) loses at most the records of the last interval; the budget
//! counters, which enforcement reads, are not affected by the batching (docs/operations.md).
//! The writer also prunes budget state of past windows once an hour.

use crate::telemetry::metrics::Metrics;
use flotilla_core::usage::UsageRecord;
use flotilla_store::DynStore;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most records in one insert.
const BATCH: usize = 1000;
/// Records kept while the store is down; past this the oldest are dropped, counted and logged.
const MAX_PENDING: usize = 200_000;

/// The sending side, cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::UnboundedSender<UsageRecord>,
}

impl Ledger {
    /// Queues a record for the next batch.
    pub fn record(&self, record: UsageRecord) {
        if self.tx.send(record).is_err() {
            tracing::error!("A usage record arrived after the ledger stopped; it is lost");
        }
    }
}

/// The ledger and its writer loop, which runs until `stop` and then writes what is left.
pub(crate) fn channel(
    store: DynStore,
    metrics: Arc<Metrics>,
    flush: Duration,
    leadership: Arc<crate::leadership::Leadership>,
    stop: CancellationToken,
) -> (Ledger, impl Future<Output = ()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<UsageRecord>();
    let writer = async move {
        let mut pending: Vec<UsageRecord> = Vec::new();
        let mut last_prune: Option<std::time::Instant> = None;
        let mut tick = tokio::time::interval(flush);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                () = stop.cancelled() => true,
            };
            while let Ok(r) = rx.try_recv() {
                pending.push(r);
            }
            write(&store, &metrics, &mut pending).await;
            // Pruning is the leader's job (one control plane on SQLite always leads).
            if leadership.is_leader() && last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(std::time::Instant::now());
                prune_budget_state(&store).await;
            }
            if stopping {
                // Records queued by calls that ended during shutdown.
                rx.close();
                while let Some(r) = rx.recv().await {
                    pending.push(r);
                }
                write(&store, &metrics, &mut pending).await;
                if !pending.is_empty() {
                    tracing::error!(
                        lost = pending.len(),
                        "Usage records could not be written before shutdown"
                    );
                }
                return;
            }
        }
    };
    (Ledger { tx }, writer)
}

/// How often the budget counters of past windows and reservations of dead processes go.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes budget state nobody reads any more: reservations of processes that died (stale), and
/// counters of windows older than last month's.
async fn prune_budget_state(store: &DynStore) {
    let now = chrono::Utc::now();
    let this_month = flotilla_core::budget::Period::Monthly.window(now).0;
    let last_month = flotilla_core::budget::Period::Monthly
        .window(this_month - chrono::Duration::days(1))
        .0;
    match store
        .prune_budget_state(now - super::budgets::STALE_RESERVATION, last_month)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::debug!(rows = n, "Pruned old budget state"),
        Err(e) => tracing::warn!(error = %e, "Could not prune old budget state"),
    }
}

async fn write(store: &DynStore, metrics: &Metrics, pending: &mut Vec<UsageRecord>) {
    while !pending.is_empty() {
        let n = pending.len().min(BATCH);
        match store.insert_usage(&pending[..n]).await {
            Ok(()) => {
                pending.drain(..n);
            }
            Err(e) => {
                tracing::warn!(error = %e, pending = pending.len(), "Could not write usage records; will retry");
                metrics.usage_write_failures.inc();
                if pending.len() > MAX_PENDING {
                    let lost = pending.len() - MAX_PENDING;
                    pending.drain(..lost);
                    tracing::error!(
                        lost,
                        "Dropped the oldest usage records: the store has been unavailable too long"
                    );
                }
                return;
            }
        }
    }
}
