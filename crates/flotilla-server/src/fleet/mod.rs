//! The fleet: the registry of agent instances and the loop that fails instances whose
//! heartbeats stop. (Health checks, outlier ejection, autoscaling and provisioners come with the
//! fleet-operations issue and live beside these.)

pub mod heartbeat;
pub mod registry;
pub mod wakers;
