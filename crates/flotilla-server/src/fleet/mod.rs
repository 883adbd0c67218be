//! The fleet (docs/design.md §5): the registry of agent instances, fleet events, the sweeper that
//! fails instances whose heartbeats stop, active health checks, the autoscaler and the
//! provisioners that carry its decisions out.

pub mod autoscaler;
pub mod events;
pub mod health;
pub mod heartbeat;
pub mod provisioners;
pub mod registry;
pub mod wakers;
