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
//! - [`lease`] renews this process's leases and returns expired ones (a crashed replica's tasks)
//!   to the queue.

pub mod completion;
pub mod dispatch;
pub mod dispatcher;
pub mod intake;
pub mod lease;
pub mod submission;
