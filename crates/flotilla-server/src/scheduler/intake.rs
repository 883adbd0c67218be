//! Group commit of submissions: concurrent `POST /v1/tasks` calls are written in one store
//! transaction, and each caller is answered only after its task is durable. One fsync then
//! covers many tasks, which is what lets SQLite with `synchronous=FULL` keep up.

use crate::fleet::wakers::Wakers;
use crate::telemetry::metrics::Metrics;
use flotilla_core::task::{NewTask, TaskStatus};
use flotilla_store::{DynStore, Inserted, StoreError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Most submissions written in one transaction.
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<Inserted, IntakeError>>;

/// The sending side, held by the API.
#[derive(Clone)]
pub(crate) struct Intake {
    tx: mpsc::Sender<(NewTask, Reply)>,
}

/// Why a submission was not stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IntakeError {
    /// The writer has stopped (shutdown).
    #[error("the control plane is shutting down")]
    Stopped,
    /// The store could not be reached, or not in time: the same submission may succeed later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store refused the batch.
    #[error("the store failed: {0}")]
    Store(String),
}

impl IntakeError {
    fn from_store(e: &StoreError) -> IntakeError {
        if e.is_transient() {
            IntakeError::Unavailable(e.to_string())
        } else {
            IntakeError::Store(e.to_string())
        }
    }
}

impl Intake {
    /// Stores one task; returns once it is durable.
    pub(crate) async fn submit(&self, task: NewTask) -> Result<Inserted, IntakeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((task, reply))
            .await
            .map_err(|_| IntakeError::Stopped)?;
        answer.await.map_err(|_| IntakeError::Stopped)?
    }
}

/// Creates the intake and its writer loop, which runs until `stop` and then drains what was
/// already sent.
pub(crate) fn channel(
    store: DynStore,
    wakers: Arc<Wakers>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> (Intake, impl Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
    (Intake { tx }, writer(store, wakers, metrics, rx, stop))
}

async fn writer(
    store: DynStore,
    wakers: Arc<Wakers>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<(NewTask, Reply)>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return },
            () = stop.cancelled() => {
                rx.close();
                if rx.recv_many(&mut batch, MAX_BATCH).await == 0 { return }
            }
        }
        let (tasks, replies): (Vec<NewTask>, Vec<Reply>) = batch.drain(..).unzip();
        let started = std::time::Instant::now();
        let inserted = store.insert_tasks(&tasks).await;
        metrics.observe_store("insert_tasks", started.elapsed());
        let results: Vec<Result<Inserted, IntakeError>> = match inserted {
            Ok(results) => results.into_iter().map(Ok).collect(),
            // One submission the database refuses must not fail the others written with it:
            // write them one by one so only the culprit gets the error.
            Err(e) if !e.is_transient() && tasks.len() > 1 => {
                let mut results = Vec::with_capacity(tasks.len());
                for task in &tasks {
                    let one = store.insert_tasks(std::slice::from_ref(task)).await;
                    results.push(
                        one.and_then(|mut r| {
                            r.pop()
                                .ok_or_else(|| StoreError::Corrupt("no insert result".to_owned()))
                        })
                        .map_err(|e| IntakeError::from_store(&e)),
                    );
                }
                results
            }
            // The database is unreachable (or refused a lone task): each caller hears why, and
            // a transient failure becomes a 503, not a 500.
            Err(e) => tasks
                .iter()
                .map(|_| Err(IntakeError::from_store(&e)))
                .collect(),
        };
        let mut types = std::collections::BTreeSet::new();
        for (result, reply) in results.into_iter().zip(replies) {
            match &result {
                // A task claimed at insertion is already being dispatched; only queued ones
                // concern the dispatcher.
                Ok(Inserted::Created(task)) if task.status == TaskStatus::Queued => {
                    types.insert(task.agent_type.clone());
                }
                Ok(Inserted::Created(_)) => {}
                Ok(Inserted::Existing(_)) => {}
                Err(e) => tracing::error!(error = %e, "Could not store a submitted task"),
            }
            let _ = reply.send(result);
        }
        for agent_type in types {
            wakers.task_queued(&agent_type);
        }
    }
}
