//! Group commit of attempt ends. Dispatches finish concurrently; their ends are written in one
//! transaction per batch. A failed write is retried (with backoff) and never dropped: an end that
//! is not durable when the process dies is recovered by lease expiry instead.

use crate::fleet::wakers::Wakers;
use crate::waiters::Waiters;
use flotilla_core::task::{AttemptEnd, TaskStatus};
use flotilla_store::DynStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most ends written in one transaction.
const MAX_BATCH: usize = 512;

/// The sending side, held by dispatches.
#[derive(Clone)]
pub struct Completions {
    tx: mpsc::UnboundedSender<AttemptEnd>,
}

impl Completions {
    /// Queues an end for writing. The channel is unbounded because its length is bounded by the
    /// fleet's total capacity (one end per in-flight attempt).
    pub fn send(&self, end: AttemptEnd) {
        if self.tx.send(end).is_err() {
            tracing::warn!(
                "Attempt end after the completion writer stopped; its lease will expire and the task re-run"
            );
        }
    }
}

/// Creates the completion channel and its writer loop, which runs until `stop` and then writes
/// what was already sent.
pub fn channel(
    store: DynStore,
    waiters: Arc<Waiters>,
    wakers: Arc<Wakers>,
    stop: CancellationToken,
) -> (Completions, impl Future<Output = ()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Completions { tx }, writer(store, waiters, wakers, rx, stop))
}

async fn writer(
    store: DynStore,
    waiters: Arc<Waiters>,
    wakers: Arc<Wakers>,
    mut rx: mpsc::UnboundedReceiver<AttemptEnd>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut stopping = false;
    loop {
        if batch.is_empty() {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return },
                () = stop.cancelled(), if !stopping => {
                    stopping = true;
                    rx.close();
                    continue;
                }
            }
        }
        let mut backoff = Duration::from_millis(50);
        let results = loop {
            match store.finish_attempts(&batch).await {
                Ok(results) => break results,
                Err(e) => {
                    tracing::error!(error = %e, ends = batch.len(), "Could not record attempt ends; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        for (end, applied) in batch.drain(..).zip(results) {
            match applied {
                Some(task) if task.status.is_terminal() => waiters.wake(task.id),
                Some(task) if task.status == TaskStatus::Queued => wakers.wake(&task.agent_type),
                Some(_) => {}
                None => {
                    tracing::debug!(task_id = %end.task_id, attempt = end.attempt, "Stale attempt end ignored")
                }
            }
        }
    }
}
