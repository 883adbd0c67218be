//! Telemetry (docs/design.md §11): the Prometheus registry ([`metrics`]), process figures,
//! rolling windows for the alert engine ([`recent`]) and task traces ([`traces`]). `/metrics`
//! and the request-counting middleware are the HTTP layer's (`api::metrics`).

pub mod metrics;
pub(crate) mod process;
pub(crate) mod recent;
pub(crate) mod traces;

tokio::task_local! {
    /// The request id of the request being handled (set by the HTTP layer), so that errors and
    /// logs can echo it.
    pub static REQUEST_ID: String;
}
