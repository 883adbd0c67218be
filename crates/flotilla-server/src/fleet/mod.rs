//! The fleet (docs/design.md §5): the registry of agent instances, fleet events, the sweeper that
//! fails instances whose heartbeats stop, active health checks, the autoscaler and the
//! provisioners that carry its decisions out.

pub(crate) mod autoscaler;
pub mod events;
pub(crate) mod health;
pub(crate) mod heartbeat;
pub(crate) mod provisioners;
pub(crate) mod registry;
pub(crate) mod wakers;

use crate::agent_clients::AgentClients;
use crate::clock::Clock;
use crate::telemetry::metrics::Metrics;
use flotilla_core::config::Config;
use flotilla_store::DynStore;
use std::sync::Arc;

/// What the fleet's loops (the sweeper, health checks, the autoscaler) need: built once by the
/// composition root, cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    pub config: Arc<Config>,
    pub store: DynStore,
    pub clock: Arc<dyn Clock>,
    pub registry: Arc<registry::Registry>,
    pub metrics: Arc<Metrics>,
    /// HTTP clients for agents (health checks obey the egress policy).
    pub agents: Arc<AgentClients>,
    /// The autoscaler's view of each pool, which `GET /v1/pools` shows.
    pub scaling: Arc<autoscaler::Scaling>,
    pub events: events::EventSink,
}
