//! The usage ledger's writer: every model call's [`UsageRecord`] is queued and written in
//! batches every `[gateway] usage_flush_ms`, and whatever is queued is written at shutdown. A
//! crash (SIGKILL, power loss) loses at most the records of the last interval; the budget
//! counters, which enforcement reads, are not affected by the batching (docs/operations.md).

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
pub fn channel(
    store: DynStore,
    metrics: Arc<Metrics>,
    flush: Duration,
    stop: CancellationToken,
) -> (Ledger, impl Future<Output = ()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<UsageRecord>();
    let writer = async move {
        let mut pending: Vec<UsageRecord> = Vec::new();
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
