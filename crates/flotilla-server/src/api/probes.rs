//! `/health` (liveness) and `/ready` (the store answers and its migrations are applied).
//! Neither needs a key.

use crate::api::routes::Routes;
use crate::app::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use flotilla_core::wire::Probe;
use std::time::Duration;
use utoipa_axum::routes;

/// Longest `/ready` waits for the store: a store that does not answer by then is as good as
/// unreachable, and the probe must answer within its own timeout (3 s in the Helm chart) rather
/// than wait out the connection pool's.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn routes() -> Routes {
    Routes::new().routes(routes!(health)).routes(routes!(ready))
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "probes", responses((status = 200, body = Probe)))]
pub(crate) async fn health() -> Json<Probe> {
    Json(Probe {
        status: "ok".to_owned(),
        reason: None,
    })
}

/// Readiness: the store is reachable and migrated, and the server is not shutting down.
#[utoipa::path(get, path = "/ready", tag = "probes", responses((status = 200, body = Probe), (status = 503, body = Probe)))]
pub(crate) async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Probe>) {
    let unavailable = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Probe {
                status: "unavailable".to_owned(),
                reason: Some(reason),
            }),
        )
    };
    if state.shutdown.is_cancelled() {
        return unavailable("shutting down".to_owned());
    }
    let Ok(ready) = tokio::time::timeout(READY_TIMEOUT, state.store.ready()).await else {
        return unavailable(format!(
            "the store did not answer within {} s",
            READY_TIMEOUT.as_secs()
        ));
    };
    match ready {
        Ok(true) => (
            StatusCode::OK,
            Json(Probe {
                status: "ok".to_owned(),
                reason: None,
            }),
        ),
        Ok(false) => unavailable("migrations are not applied".to_owned()),
        // The driver's words stay in the log: `/ready` is open to anyone.
        Err(e) => {
            tracing::warn!(error = %e, "Not ready: the store is unreachable");
            unavailable("the store is unreachable".to_owned())
        }
    }
}
