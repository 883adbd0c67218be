//! One signal per agent type: submissions, freed capacity and new instances wake the dispatcher
//! of that type instead of it polling the store, and a "maybe queued" flag tells it whether a
//! claim can find anything — so a freed slot with an empty queue costs no store transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The signal of one agent type.
#[derive(Default)]
pub struct Signal {
    notify: Notify,
    maybe_queued: AtomicBool,
}

impl Signal {
    /// Waits for the next wake-up (one sent while nobody waited is kept).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Clears and returns the "maybe queued" flag. Clear it *before* claiming: a task queued
    /// during the claim sets it again, so no task is overlooked.
    pub fn take_maybe_queued(&self) -> bool {
        self.maybe_queued.swap(false, Ordering::AcqRel)
    }

    /// Reads the flag without clearing it.
    pub fn maybe_queued(&self) -> bool {
        self.maybe_queued.load(Ordering::Acquire)
    }

    /// Sets the flag (e.g. when a claim was cut short by its batch size).
    pub fn set_maybe_queued(&self) {
        self.maybe_queued.store(true, Ordering::Release);
    }
}

/// Wake-up signals of the per-type dispatchers.
pub struct Wakers {
    by_type: Mutex<HashMap<String, Arc<Signal>>>,
    /// Tells the other control planes on the database about queued tasks.
    cluster: crate::cluster::Notifier,
}

impl Default for Wakers {
    /// Wakers that tell no other control plane.
    fn default() -> Self {
        Self::new(crate::cluster::Notifier::disabled())
    }
}

impl Wakers {
    /// Wakers that tell the other control planes through `cluster`.
    pub fn new(cluster: crate::cluster::Notifier) -> Self {
        Self {
            cluster,
            by_type: Mutex::default(),
        }
    }

    /// The signal of one agent type (created on first use, with "maybe queued" set so that a new
    /// dispatcher looks at the queue once).
    pub fn get(&self, agent_type: &str) -> Arc<Signal> {
        let mut map = self
            .by_type
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(agent_type.to_owned())
            .or_insert_with(|| {
                let signal = Signal::default();
                signal.set_maybe_queued();
                Arc::new(signal)
            })
            .clone()
    }

    /// Capacity changed (a slot freed, an instance joined): wake the dispatcher.
    pub fn wake(&self, agent_type: &str) {
        self.get(agent_type).notify.notify_one();
    }

    /// A task of this type became claimable: flag it and wake the dispatcher, here and on the
    /// other control planes.
    pub fn task_queued(&self, agent_type: &str) {
        // Checked first: no copy of the type is made on the hot path for nobody to read.
        if self.cluster.enabled() {
            self.cluster
                .send(crate::cluster::Notice::Queued(agent_type.to_owned()));
        }
        self.task_queued_here(agent_type);
    }

    /// [`Wakers::task_queued`] on this control plane only (another one told us).
    pub fn task_queued_here(&self, agent_type: &str) {
        let signal = self.get(agent_type);
        signal.set_maybe_queued();
        signal.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queued_flag_is_taken_once_and_set_by_new_work() {
        let wakers = Wakers::default();
        let signal = wakers.get("t");
        assert!(signal.take_maybe_queued(), "a new dispatcher looks once");
        assert!(!signal.take_maybe_queued());
        wakers.wake("t");
        assert!(
            !signal.take_maybe_queued(),
            "freed capacity alone does not mean work is queued"
        );
        wakers.task_queued("t");
        assert!(signal.take_maybe_queued());
    }
}
