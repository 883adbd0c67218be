//! The pure domain of Flotilla: identifiers, entities and their state machines, the decisions the
//! control plane takes (which instance gets a task, whether a failed attempt is retried and when),
//! the wire types of API v1 and the agent contract, and the configuration schema.
//!
//! This crate does no I/O, spawns nothing and never reads the clock: time and randomness are
//! passed in, so that every decision is a plain function that tests and simulations can drive.

pub mod agent;
pub mod agent_url;
pub mod alert;
pub mod analysis;
pub mod audit;
pub mod auth;
pub mod autoscale;
pub mod balance;
pub mod budget;
pub mod client_addr;
pub mod config;
pub mod diagnosis;
pub mod egress;
#[cfg(test)]
mod enum_names;
pub mod event;
pub mod fair_share;
pub mod health;
pub mod id;
pub mod model;
pub mod money;
pub mod quota;
pub mod rate;
pub mod recommend;
pub mod reported_usage;
pub mod retry;
pub mod signature;
pub mod stats;
pub mod task;
pub mod task_token;
pub mod tenant;
pub mod usage;
pub mod wire;

/// Instants are UTC timestamps; the shell reads the clock and passes them in.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
