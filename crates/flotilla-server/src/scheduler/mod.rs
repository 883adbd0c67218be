//! The scheduler: from a queued task to a recorded result (docs/design.md §4).
//!
//! - [`submission`] takes a new task: straight to a free slot when nothing of its type waits,
//!   else to the queue.
//! - [`intake`] writes submissions in batches (group commit) and wakes the dispatcher of each type.
//! - [`dispatcher`] runs one loop per agent type: it claims as many queued tasks as the type has
//!   free slots, under a lease, and starts one attempt per task on the least-loaded instance.
//! - [`dispatch`] is the HTTP call of one attempt, through `agent_clients` (the HTTP clients
//!   for agents, which enforce the egress policy at send time, and bounded reads of answers).
//! - [`completion`] writes the end of attempts in batches, first terminal write wins, and wakes
//!   long-polls once the result is durable.
//! - [`queue_limit`] refuses a submission that would take its tenant past its queue limit.
//! - [`lease`] renews this process's leases and returns expired ones (a crashed replica's tasks)
//!   to the queue.

pub(crate) mod completion;
pub mod dispatch;
pub(crate) mod dispatcher;
pub(crate) mod intake;
pub(crate) mod lease;
mod overdue;
pub(crate) mod queue_limit;
pub(crate) mod submission;

use crate::agent_clients::AgentClients;
use crate::auth::attempts::LiveAttempts;
use crate::clock::Clock;
use crate::fleet::registry::Registry;
use crate::fleet::wakers::Wakers;
use crate::leadership::Leadership;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::recent::Recent;
use crate::telemetry::traces::Traces;
use completion::Completions;
use dispatcher::Dispatchers;
use flotilla_core::config::Config;
use flotilla_core::task_token::TokenKey;
use flotilla_store::DynStore;
use intake::Intake;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The scheduler's handles: what its loops (dispatchers, leases) and submissions need, and
/// nothing of the HTTP layer. Built once by the composition root ([`crate::start`]).
pub struct Scheduler {
    pub(crate) config: Arc<Config>,
    pub(crate) store: DynStore,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) wakers: Arc<Wakers>,
    pub(crate) metrics: Arc<Metrics>,
    /// Rolling windows the alert engine reads (response times, unmetered tokens).
    pub(crate) recent: Arc<Recent>,
    /// Which attempts run: an attempt's model-gateway token is refused once it ends here.
    pub(crate) attempts: Arc<LiveAttempts>,
    pub(crate) intake: Intake,
    pub(crate) completions: Completions,
    pub(crate) dispatchers: Dispatchers,
    /// Each tenant's queued tasks against `max_queued_per_tenant`.
    pub(crate) queue_limits: queue_limit::QueueLimits,
    /// HTTP clients for agents (`[agents_egress]`, `[agents_tls]`).
    pub(crate) agents: Arc<AgentClients>,
    /// The task trace exporter; `None` without `[telemetry.otlp]`.
    pub(crate) traces: Option<Arc<Traces>>,
    /// Signs per-task model-gateway tokens.
    pub(crate) task_token_key: Arc<TokenKey>,
    /// The model gateway's base URL as agents are told it.
    pub(crate) gateway_url: Arc<str>,
    /// This process's lease owner name.
    pub(crate) owner: Arc<str>,
    /// Whether this control plane leads (re-queues expired leases).
    pub(crate) leadership: Arc<Leadership>,
    /// Long-polls, woken when the leader ends a task outside the completion writer.
    pub(crate) waiters: Arc<crate::waiters::Waiters>,
    /// Cancelled when the server begins to shut down.
    pub(crate) shutdown: CancellationToken,
}

impl Scheduler {
    /// Starts the dispatcher of `agent_type` unless it runs already.
    pub fn ensure(self: &Arc<Self>, agent_type: &str) {
        self.dispatchers.ensure(self, agent_type);
    }
}
