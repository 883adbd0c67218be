//! The in-memory registry of agent instances and their in-flight load.
//!
//! The store holds the durable record of each instance (so a restarted control plane knows its
//! fleet); this registry holds what changes on every dispatch — the tasks in flight per instance —
//! and is the only place that hands out dispatch slots, so an instance never gets more than its
//! capacity. Locks are held for a few map operations, never across an `.await`.

use crate::fleet::wakers::Wakers;
use flotilla_core::Timestamp;
use flotilla_core::agent::{AgentInstance, AgentStatus, heartbeat_expired};
use flotilla_core::balance::{Candidate, least_loaded};
use flotilla_core::id::AgentId;
use flotilla_core::wire::Desired;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A reserved place on an instance for one task.
#[derive(Clone, Debug)]
pub struct Slot {
    pub agent_id: AgentId,
    pub url: String,
}

/// What `DELETE /v1/agents/{id}` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deregistration {
    /// No task in flight: the instance is gone.
    Removed,
    /// Tasks in flight: the instance drains and is removed when the last one ends.
    Draining,
    /// No such instance.
    Unknown,
}

struct Entry {
    record: AgentInstance,
    in_flight: u32,
    /// Removal was asked for; happens when `in_flight` reaches 0.
    remove_when_idle: bool,
}

impl Entry {
    fn view(&self) -> AgentInstance {
        let mut record = self.record.clone();
        record.load = self.in_flight;
        if record.status.accepts_work() {
            record.status = AgentStatus::for_load(self.in_flight);
        }
        record
    }
}

/// The registry. Cheap to share behind an `Arc`.
pub struct Registry {
    entries: Mutex<HashMap<AgentId, Entry>>,
    wakers: Arc<Wakers>,
}

impl Registry {
    /// An empty registry that wakes dispatchers through `wakers`.
    pub fn new(wakers: Arc<Wakers>) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            wakers,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<AgentId, Entry>> {
        // A poisoned lock means a panic while holding it; the map itself is still consistent
        // (every mutation is a single insert/remove/field write), so keep serving.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds (or replaces) an instance.
    pub fn insert(&self, record: AgentInstance) {
        let agent_type = record.agent_type.clone();
        self.lock().insert(
            record.id,
            Entry {
                record,
                in_flight: 0,
                remove_when_idle: false,
            },
        );
        self.wakers.wake(&agent_type);
    }

    /// Loads the durable fleet at start-up. Each instance gets a full heartbeat timeout from
    /// `now` to check in, since its heartbeats could not arrive while the control plane was down.
    pub fn load(&self, records: Vec<AgentInstance>, now: Timestamp) {
        for mut record in records {
            record.last_heartbeat = record.last_heartbeat.max(now);
            record.load = 0;
            self.insert(record);
        }
    }

    /// Records a heartbeat. `None` when the instance is unknown. A failed instance that
    /// heartbeats again is back in rotation; one that says `draining` gets no new work.
    pub fn heartbeat(
        &self,
        id: AgentId,
        status: Option<AgentStatus>,
        now: Timestamp,
    ) -> Option<(Desired, AgentStatus)> {
        let mut entries = self.lock();
        let entry = entries.get_mut(&id)?;
        entry.record.last_heartbeat = now;
        let mut recovered = false;
        match status {
            Some(AgentStatus::Draining) => entry.record.status = AgentStatus::Draining,
            _ if entry.record.status == AgentStatus::Failed => {
                entry.record.status = AgentStatus::for_load(entry.in_flight);
                recovered = true;
            }
            _ => {}
        }
        let desired = if entry.remove_when_idle || entry.record.status == AgentStatus::Draining {
            Desired::Drain
        } else {
            Desired::Run
        };
        let shown = entry.view().status;
        let agent_type = entry.record.agent_type.clone();
        drop(entries);
        if recovered {
            self.wakers.wake(&agent_type);
        }
        Some((desired, shown))
    }

    /// Free task slots among instances of a type that accept work.
    pub fn free_capacity(&self, agent_type: &str) -> u32 {
        self.lock()
            .values()
            .filter(|e| {
                e.record.agent_type == agent_type
                    && e.record.status.accepts_work()
                    && !e.remove_when_idle
            })
            .map(|e| e.record.capacity.saturating_sub(e.in_flight))
            .sum()
    }

    /// Reserves a slot on the least-loaded instance of a type, avoiding `avoid` if possible.
    pub fn acquire(&self, agent_type: &str, avoid: &[AgentId]) -> Option<Slot> {
        let mut entries = self.lock();
        let candidates: Vec<Candidate> = entries
            .values()
            .filter(|e| e.record.agent_type == agent_type && !e.remove_when_idle)
            .map(|e| Candidate {
                id: e.record.id,
                status: e.record.status,
                capacity: e.record.capacity,
                load: e.in_flight,
            })
            .collect();
        let chosen = least_loaded(&candidates, avoid)?;
        let entry = entries.get_mut(&chosen)?;
        entry.in_flight += 1;
        Some(Slot {
            agent_id: chosen,
            url: entry.record.url.clone(),
        })
    }

    /// Returns a slot. True when the instance was waiting to be removed and now is.
    pub fn release(&self, id: AgentId) -> bool {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&id) else {
            return false;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        let agent_type = entry.record.agent_type.clone();
        let removed = entry.remove_when_idle && entry.in_flight == 0;
        if removed {
            entries.remove(&id);
        }
        drop(entries);
        self.wakers.wake(&agent_type);
        removed
    }

    /// Takes an instance out of rotation and removes it once its in-flight tasks end.
    pub fn deregister(&self, id: AgentId) -> Deregistration {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&id) else {
            return Deregistration::Unknown;
        };
        if entry.in_flight == 0 {
            entries.remove(&id);
            Deregistration::Removed
        } else {
            entry.remove_when_idle = true;
            entry.record.status = AgentStatus::Draining;
            Deregistration::Draining
        }
    }

    /// Marks failed every instance whose heartbeat is older than `timeout`; returns them.
    pub fn expire_heartbeats(
        &self,
        now: Timestamp,
        timeout: chrono::Duration,
    ) -> Vec<AgentInstance> {
        let mut expired = Vec::new();
        for entry in self.lock().values_mut() {
            if entry.record.status != AgentStatus::Failed
                && heartbeat_expired(entry.record.last_heartbeat, now, timeout)
            {
                entry.record.status = AgentStatus::Failed;
                expired.push(entry.view());
            }
        }
        expired
    }

    /// Every instance as the API shows it, oldest first.
    pub fn list(&self) -> Vec<AgentInstance> {
        let mut all: Vec<_> = self.lock().values().map(Entry::view).collect();
        all.sort_by_key(|a| (a.created_at, a.id));
        all
    }

    /// One instance as the API shows it.
    pub fn get(&self, id: AgentId) -> Option<AgentInstance> {
        self.lock().get(&id).map(Entry::view)
    }

    /// True when some instance (in any state) serves this type.
    pub fn knows_type(&self, agent_type: &str) -> bool {
        self.lock()
            .values()
            .any(|e| e.record.agent_type == agent_type)
    }

    /// The agent types of all instances.
    pub fn types(&self) -> Vec<String> {
        let mut types: Vec<String> = self
            .lock()
            .values()
            .map(|e| e.record.agent_type.clone())
            .collect();
        types.sort();
        types.dedup();
        types
    }
}

#[cfg(test)]
mod tests;
