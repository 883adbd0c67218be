//! Flotilla's agent SDK and its built-in simulated demo agents.
//!
//! An agent implements [`Agent`]; the [`runtime`] serves it over the agent contract of
//! docs/design.md §6 (`POST /execute`, `GET /health`), registers it with the control plane, keeps it
//! alive with heartbeats and drains it on shutdown. [`simulated`] holds the agents that
//! `flotilla agent` and `flotilla demo` run: they do no real work, and say so in every output.
//!
//! This crate talks to the control plane only through `flotilla-client` and holds no scheduling
//! logic: which instance gets which task is decided by the control plane.

pub mod runtime;
pub mod simulated;

pub use flotilla_tls::ConnectionLimits;
pub use runtime::{
    AgentRuntimeError, AgentSecurity, RunningAgent, RuntimeConfig, ServerTls, run, start,
};
pub use simulated::{Latency, SimulatedAgent, SimulationError};

use flotilla_core::wire::{ExecuteRequest, ExecuteResponse};
use std::future::Future;

/// Work an agent instance does for one task attempt.
///
/// The runtime calls `execute` at most `capacity` times at once and answers the control plane
/// with its result. A task may be delivered more than once (execution is at least once); the
/// request's `task_id` and `attempt` let an implementation deduplicate.
pub trait Agent: Send + Sync + 'static {
    /// Run one attempt of a task.
    fn execute(
        &self,
        request: ExecuteRequest,
    ) -> impl Future<Output = Result<ExecuteResponse, AgentError>> + Send;
}

/// Why an attempt produced no output. The variant decides whether the control plane retries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The task itself is bad (invalid input, unsupported request): the runtime answers 422,
    /// and the control plane fails the task without retrying it.
    #[error("task rejected: {0}")]
    Rejected(String),
    /// The attempt failed for a reason that may pass (a dependency was down, a model call
    /// failed): the runtime answers 500, and the control plane retries on another instance.
    #[error("task failed: {0}")]
    Failed(String),
}
