//! `GET /v1/system`: facts about this control-plane process that the rest of the API does not
//! show — version, uptime, store backend, CPU, memory, disk of the data directory, whether TLS
//! and open metrics are on, and who the caller is. Read-only; `flotilla doctor` reads it.

use crate::api::error::ApiError;
use crate::api::routes::{Routes, permit};
use crate::app::AppState;
use crate::auth::Caller;
use crate::telemetry::process;
use axum::Json;
use axum::extract::State;
use flotilla_core::auth::Permission;
use flotilla_core::config::Database;
use flotilla_core::wire::{SystemCaller, SystemInfo};
use std::time::SystemTime;
use utoipa_axum::routes;

pub(super) fn routes() -> Routes {
    Routes::new().routes(permit(
        Permission::ReadFleet,
        "read the system's state",
        routes!(system),
    ))
}

/// This control-plane process: version, uptime, store, resources, security settings, queues.
#[utoipa::path(get, path = "/v1/system", tag = "fleet", responses((status = 200, body = SystemInfo)), security(("bearer" = [])))]
pub(crate) async fn system(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SystemInfo>, ApiError> {
    // Queues of every tenant are the platform's to see; a tenant sees its own.
    let queued = state.store.queued_by_type(caller.reader()).await?;
    let started = process::mark_start();
    let uptime = SystemTime::now()
        .duration_since(started)
        .unwrap_or_default()
        .as_secs();
    // The process's own reads (/proc, statvfs) are quick but blocking.
    let data_dir = state.config.data_dir.clone();
    let (info, disk) =
        tokio::task::spawn_blocking(move || (process::sample(), process::disk(&data_dir)))
            .await
            .map_err(|e| ApiError::Internal(format!("cannot read process facts: {e}")))?;
    let providers = state.gateway.probe().await;
    Ok(Json(SystemInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: chrono::DateTime::<chrono::Utc>::from(started),
        uptime_s: uptime,
        store: match state.config.database {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
        .to_owned(),
        listen: state.config.listen.to_string(),
        tls: state.config.tls.is_some(),
        metrics_public: state.config.telemetry.metrics_public,
        caller: SystemCaller {
            key_id: caller.key_id.clone(),
            role: caller.role,
            tenant_id: caller.tenant_id,
        },
        process: info,
        data_dir_disk: disk,
        queued,
        providers,
        replica: Some(flotilla_core::wire::ReplicaInfo {
            owner: state.owner.to_string(),
            leader: state.leadership.is_leader(),
            leader_owner: state.leadership.leader(),
            generation: state.leadership.generation(),
        }),
    }))
}
