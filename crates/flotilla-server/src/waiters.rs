//! Long-poll waiters: `GET /v1/tasks/{id}?wait=N` parks here until the task reaches a terminal
//! state. The completion writer wakes them after the terminal state is durable.
//!
//! A parked waiter is a [`Parked`] guard: however the long-poll ends — woken, timed out, the
//! task missing, foreign or already finished, the client gone — dropping the guard removes the
//! waiter, so nothing is left behind ([`Waiters::parked`] counts what is parked).
//!
//! One key may have at most `server.max_waits_per_key` long-polls parked at once (issue 15,
//! "connections"): a key in a loop cannot hold every connection and task of the server.

use flotilla_core::id::TaskId;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Parked long-polls by task.
pub(crate) struct Waiters {
    parked: Mutex<HashMap<TaskId, Vec<oneshot::Sender<()>>>>,
    /// Parked long-polls by key (public id); a key without any is not kept.
    per_key: Mutex<HashMap<String, u32>>,
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
            per_key: Mutex::default(),
        }
    }

    /// Parks a waiter of `key`, unless the key has `max_per_key` parked already (then `None`);
    /// [`Parked::woken`] resolves when [`Waiters::wake`] is called for the task. Park before
    /// reading the task's state, so a completion in between is not missed. The waiter is
    /// removed when the guard is dropped.
    pub(crate) fn park(&self, task: TaskId, key: &str, max_per_key: u32) -> Option<Parked<'_>> {
        {
            let mut per_key = lock(&self.per_key);
            let count = per_key.entry(key.to_owned()).or_default();
            if *count >= max_per_key {
                return None;
            }
            *count += 1;
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.parked).entry(task).or_default().push(tx);
        Some(Parked {
            waiters: self,
            task,
            key: key.to_owned(),
            woken: Some(rx),
        })
    }

    /// Keys with a parked long-poll.
    #[cfg(test)]
    fn keys(&self) -> usize {
        lock(&self.per_key).len()
    }

    /// How many waiters are parked (the `flotilla_waiters_parked` gauge).
    pub(crate) fn parked(&self) -> usize {
        self.parked
            .lock()
            .map(|parked| parked.values().map(Vec::len).sum())
            .unwrap_or(0)
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

    /// Drops the task's waiters that gave up (their receiver is gone) and counts one waiter of
    /// `key` less.
    fn prune(&self, task: TaskId, key: &str) {
        {
            let mut per_key = lock(&self.per_key);
            if let Some(count) = per_key.get_mut(key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    per_key.remove(key);
                }
            }
        }
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

/// One parked long-poll; dropping it removes the waiter.
pub(crate) struct Parked<'a> {
    waiters: &'a Waiters,
    task: TaskId,
    key: String,
    woken: Option<oneshot::Receiver<()>>,
}

impl Parked<'_> {
    /// Resolves when the task's waiters are woken (or the waiters were dropped).
    pub(crate) async fn woken(&mut self) {
        if let Some(rx) = self.woken.as_mut() {
            let _ = rx.await;
        }
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        // The receiver goes first, so that its sender reads as closed and is pruned.
        drop(self.woken.take());
        self.waiters.prune(self.task, &self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use uuid::Uuid;

    fn park<'a>(waiters: &'a Waiters, task: TaskId) -> Parked<'a> {
        waiters.park(task, "key", u32::MAX).unwrap()
    }

    #[tokio::test]
    async fn wake_resolves_every_waiter_of_the_task_only() {
        let waiters = Waiters::default();
        let a = TaskId(Uuid::now_v7());
        let b = TaskId(Uuid::now_v7());
        let (mut p1, mut p2, mut p3) = (park(&waiters, a), park(&waiters, a), park(&waiters, b));
        assert_eq!(waiters.parked(), 3);
        waiters.wake(a);
        p1.woken().await;
        p2.woken().await;
        assert!(p3.woken().now_or_never().is_none());
        assert_eq!(waiters.parked(), 1);
        drop((p1, p2, p3));
        assert!(waiters.is_empty());
    }

    #[test]
    fn every_dropped_guard_removes_its_waiter() {
        let waiters = Waiters::default();
        let a = TaskId(Uuid::now_v7());
        let kept = park(&waiters, a);
        for _ in 0..1_000 {
            drop(park(&waiters, a));
            drop(park(&waiters, TaskId(Uuid::now_v7())));
        }
        assert_eq!((waiters.parked(), waiters.len()), (1, 1));
        drop(kept);
        assert!(waiters.is_empty());
        assert_eq!(waiters.keys(), 0, "a key without waiters is forgotten");
    }

    #[test]
    fn a_key_parks_at_most_its_limit() {
        let waiters = Waiters::default();
        let task = TaskId(Uuid::now_v7());
        let held: Vec<_> = (0..3)
            .map(|_| waiters.park(task, "a", 3).unwrap())
            .collect();
        assert!(waiters.park(task, "a", 3).is_none());
        // Another key is not affected; a freed place can be used again.
        let other = waiters.park(task, "b", 3);
        assert!(other.is_some());
        drop(held);
        assert!(waiters.park(task, "a", 3).is_some());
    }
}
