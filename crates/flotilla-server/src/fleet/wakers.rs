//! One `Notify` per agent type: submissions, freed capacity and new instances wake the
//! dispatcher of that type instead of it polling the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Wake-up signals of the per-type dispatchers.
#[derive(Default)]
pub struct Wakers {
    by_type: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Wakers {
    /// The signal of one agent type (created on first use).
    pub fn get(&self, agent_type: &str) -> Arc<Notify> {
        let Ok(mut map) = self.by_type.lock() else {
            return Arc::new(Notify::new());
        };
        map.entry(agent_type.to_owned()).or_default().clone()
    }

    /// Wakes the dispatcher of a type; the wake-up is kept if it is not waiting right now.
    pub fn wake(&self, agent_type: &str) {
        self.get(agent_type).notify_one();
    }
}
