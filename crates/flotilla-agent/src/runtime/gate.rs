//! Admission of `/execute` calls: the instance's load, its capacity and whether it is draining,
//! kept in one value so that admission is exact under concurrency and a drain cannot miss a
//! call admitted at the same moment.

use std::sync::Arc;
use tokio::sync::watch;

/// Load and drain state of the instance.
#[derive(Debug)]
pub(crate) struct Gate {
    capacity: u32,
    state: watch::Sender<GateState>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct GateState {
    load: u32,
    draining: bool,
}

/// Why a call was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `load == capacity`.
    AtCapacity,
    /// The instance is draining and takes no new work.
    Draining,
}

/// One admitted call; the load drops again when it is dropped (also when the call is abandoned
/// because the caller went away).
#[derive(Debug)]
pub(crate) struct Permit {
    gate: Arc<Gate>,
}

impl Gate {
    pub(crate) fn new(capacity: u32) -> Gate {
        Gate {
            capacity,
            state: watch::Sender::new(GateState::default()),
        }
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Tasks in flight now.
    pub(crate) fn load(&self) -> u32 {
        self.state.borrow().load
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.state.borrow().draining
    }

    /// Takes a slot if the instance is not draining and has one free.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Permit, Refusal> {
        let mut outcome = Err(Refusal::AtCapacity);
        self.state.send_if_modified(|state| {
            if state.draining {
                outcome = Err(Refusal::Draining);
                false
            } else if state.load >= self.capacity {
                false
            } else {
                state.load += 1;
                outcome = Ok(());
                true
            }
        });
        outcome.map(|()| Permit {
            gate: Arc::clone(self),
        })
    }

    /// From now on every call is refused with [`Refusal::Draining`].
    pub(crate) fn start_draining(&self) {
        self.state
            .send_if_modified(|state| !std::mem::replace(&mut state.draining, true));
    }

    /// Resolves once no call is in flight.
    pub(crate) async fn wait_idle(&self) {
        let mut changes = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = changes.wait_for(|state| state.load == 0).await;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate
            .state
            .send_modify(|state| state.load = state.load.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_capacity_and_frees_on_drop() {
        let gate = Arc::new(Gate::new(2));
        let a = gate.admit();
        let b = gate.admit();
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(gate.admit().err(), Some(Refusal::AtCapacity));
        assert_eq!(gate.load(), 2);
        drop(a);
        assert_eq!(gate.load(), 1);
        assert!(gate.admit().is_ok(), "a freed slot is reusable");
    }

    #[test]
    fn draining_refuses_new_calls() {
        let gate = Arc::new(Gate::new(2));
        let running = gate.admit();
        gate.start_draining();
        assert_eq!(gate.admit().err(), Some(Refusal::Draining));
        assert!(gate.is_draining());
        drop(running);
        assert_eq!(gate.load(), 0);
    }

    #[tokio::test]
    async fn wait_idle_resolves_when_the_last_call_ends() {
        let gate = Arc::new(Gate::new(4));
        let permit = gate.admit();
        let waiter = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.wait_idle().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(permit);
        assert!(waiter.await.is_ok());
    }

    #[tokio::test]
    async fn concurrent_admission_never_exceeds_capacity() {
        let gate = Arc::new(Gate::new(3));
        let mut handles = Vec::new();
        for _ in 0..64 {
            let gate = Arc::clone(&gate);
            handles.push(tokio::spawn(async move {
                let permit = gate.admit().ok();
                let seen = gate.load();
                tokio::task::yield_now().await;
                drop(permit);
                seen
            }));
        }
        for handle in handles {
            let seen = handle.await.unwrap_or(u32::MAX);
            assert!(seen <= 3, "load {seen} exceeded the capacity");
        }
        assert_eq!(gate.load(), 0);
    }
}
