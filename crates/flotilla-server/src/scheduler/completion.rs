//! Group commit of attempt ends. Dispatches finish concurrently; their ends are written in one
//! transaction per batch. A failed write is retried (with backoff) and never dropped: an end that
//! is not durable when the process dies is recovered by lease expiry instead.

use crate::clock::Clock;
use crate::fleet::wakers::Wakers;
use crate::telemetry::metrics::{Metrics, TaskLabels};
use crate::telemetry::traces::Traces;
use crate::waiters::Waiters;
use flotilla_core::task::{AttemptEnd, AttemptResult, Task, TaskStatus};
use flotilla_store::{DynStore, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most ends written in one transaction.
const MAX_BATCH: usize = 512;

/// The sending side, held by dispatches.
#[derive(Clone)]
pub(crate) struct Completions {
    tx: mpsc::UnboundedSender<AttemptEnd>,
}

impl Completions {
    /// Queues an end for writing. The channel is unbounded because its length is bounded by the
    /// fleet's total capacity (one end per in-flight attempt).
    pub(crate) fn send(&self, end: AttemptEnd) {
        if self.tx.send(end).is_err() {
            tracing::warn!(
                "Attempt end after the completion writer stopped; its lease will expire and the task re-run"
            );
        }
    }
}

/// What the completion writer reports a task's end to besides the store.
pub(crate) struct Observers {
    pub waiters: Arc<Waiters>,
    pub wakers: Arc<Wakers>,
    pub metrics: Arc<Metrics>,
    /// Records `task.complete` when traces are exported.
    pub traces: Option<Arc<Traces>>,
    pub clock: Arc<dyn Clock>,
}

/// Creates the completion channel and its writer loop, which runs until `stop` and then writes
/// what was already sent.
pub(crate) fn channel(
    store: DynStore,
    observers: Observers,
    stop: CancellationToken,
) -> (Completions, impl Future<Output = ()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Completions { tx }, writer(store, observers, rx, stop))
}

async fn writer(
    store: DynStore,
    observers: Observers,
    mut rx: mpsc::UnboundedReceiver<AttemptEnd>,
    stop: CancellationToken,
) {
    let Observers {
        waiters,
        wakers,
        metrics,
        traces,
        clock,
    } = observers;
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
        let started = std::time::Instant::now();
        let written = write(store.as_ref(), &batch, &stop).await;
        metrics.observe_store("finish_attempts", started.elapsed());
        let Some(results) = written else {
            batch.clear();
            continue;
        };
        for (end, applied) in batch.drain(..).zip(results) {
            match applied {
                Some(task) if task.status.is_terminal() => {
                    let took = task.finished_at.unwrap_or(task.updated_at) - task.created_at;
                    metrics
                        .task_duration
                        .get_or_create(&TaskLabels {
                            agent_type: task.agent_type.clone(),
                            status: task.status.as_str().to_owned(),
                        })
                        .observe(took.to_std().unwrap_or_default().as_secs_f64());
                    if let Some(traces) = &traces {
                        traces.completed(&task, clock.now());
                    }
                    waiters.wake(task.id);
                }
                Some(task) if task.status == TaskStatus::Queued => {
                    wakers.task_queued(&task.agent_type)
                }
                Some(_) => {}
                None => {
                    tracing::debug!(task_id = %end.task_id, attempt = end.attempt, "Stale attempt end ignored")
                }
            }
        }
    }
}

/// Writes a batch, retrying while the store is unreachable (until shutdown, after which lease
/// expiry takes over). When the store refuses the batch's data, the ends are written one by one
/// so that one unstorable result cannot hold up the others.
async fn write(
    store: &dyn Store,
    batch: &[AttemptEnd],
    stop: &CancellationToken,
) -> Option<Vec<Option<Task>>> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.finish_attempts(batch).await {
            Ok(results) => return Some(results),
            Err(e) if !e.is_transient() => break,
            Err(e) if stop.is_cancelled() => {
                tracing::error!(error = %e, ends = batch.len(), "Could not record attempt ends at shutdown; their leases will expire and the tasks re-run");
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, ends = batch.len(), "Could not record attempt ends; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    let mut results = Vec::with_capacity(batch.len());
    for end in batch {
        let result = match store.finish_attempts(std::slice::from_ref(end)).await {
            Ok(mut one) => one.pop().flatten(),
            Err(e) if !e.is_transient() => {
                tracing::error!(task_id = %end.task_id, error = %e, "The store refused an attempt's result; failing the task");
                let failed = AttemptEnd {
                    result: AttemptResult::Terminal {
                        status: TaskStatus::Failed,
                        error: format!("the agent's result could not be stored: {e}"),
                    },
                    ..end.clone()
                };
                store
                    .finish_attempts(std::slice::from_ref(&failed))
                    .await
                    .ok()
                    .and_then(|mut one| one.pop().flatten())
            }
            // Unreachable again: leave this one to lease expiry.
            Err(_) => None,
        };
        results.push(result);
    }
    Some(results)
}
