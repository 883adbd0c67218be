//! Long-poll waiters: `GET /v1/tasks/{id}?wait=N` parks here until the task reaches a terminal
//! state. The completion writer wakes them after the terminal state is durable.

use flotilla_core::id::TaskId;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Parked long-polls by task.
pub(crate) struct Waiters {
    parked: Mutex<HashMap<TaskId, Vec<oneshot::Sender<()>>>>,
    /// Tells the other control planes on the database about ended tasks.
    cluster: crate::cluster::Notifier,
}

impl Default for Waiters {
    /// Waiters that tell no other control plane.
    fn default() -> Self {
        Self::new(crate::cluster::Notifier::disabled())
    }
}

impl Waiters {
    /// Waiters that tell the other control planes through `cluster`.
    pub(crate) fn new(cluster: crate::cluster::Notifier) -> Self {
        Self {
            cluster,
            parked: Mutex::default(),
        }
    }

    /// Parks a waiter; the receiver resolves when [`Waiters::wake`] is called for the task.
    /// Register before reading the task's state, so a completion in between is not missed.
    pub(crate) fn park(&self, task: TaskId) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut parked) = self.parked.lock() {
            parked.entry(task).or_default().push(tx);
        }
        rx
    }

    /// Wakes every waiter of a task, here and on the other control planes.
    pub(crate) fn wake(&self, task: TaskId) {
        self.cluster.send(crate::cluster::Notice::Done(task));
        self.wake_here(task);
    }

    /// [`Waiters::wake`] on this control plane only (another one told us).
    pub(crate) fn wake_here(&self, task: TaskId) {
        let senders = self
            .parked
            .lock()
            .ok()
            .and_then(|mut parked| parked.remove(&task));
        for tx in senders.into_iter().flatten() {
            let _ = tx.send(());
        }
    }

    /// Wakes every waiter (their tasks' ends may have been missed); each re-reads its task.
    pub(crate) fn wake_all(&self) {
        let parked = self
            .parked
            .lock()
            .map(|mut parked| std::mem::take(&mut *parked))
            .unwrap_or_default();
        for tx in parked.into_values().flatten() {
            let _ = tx.send(());
        }
    }

    /// Drops waiters that gave up (their receiver is gone), so timed-out polls leave nothing.
    pub(crate) fn prune(&self, task: TaskId) {
        if let Ok(mut parked) = self.parked.lock()
            && let Some(senders) = parked.get_mut(&task)
        {
            senders.retain(|tx| !tx.is_closed());
            if senders.is_empty() {
                parked.remove(&task);
            }
        }
    }

    /// Number of tasks with parked waiters.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.parked.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// True when nobody waits.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[tokio::test]
    async fn wake_resolves_every_waiter_of_the_task_only() {
        let waiters = Waiters::default();
        let a = TaskId(Uuid::now_v7());
        let b = TaskId(Uuid::now_v7());
        let (rx1, rx2, mut rx3) = (waiters.park(a), waiters.park(a), waiters.park(b));
        waiters.wake(a);
        assert!(rx1.await.is_ok() && rx2.await.is_ok());
        assert!(rx3.try_recv().is_err());
        assert_eq!(waiters.len(), 1);
    }

    #[test]
    fn prune_forgets_abandoned_waiters() {
        let waiters = Waiters::default();
        let a = TaskId(Uuid::now_v7());
        drop(waiters.park(a));
        waiters.prune(a);
        assert!(waiters.is_empty());
    }
}
