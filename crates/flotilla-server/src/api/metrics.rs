//! `GET /metrics` and the middleware that counts and times every request: the HTTP side of
//! telemetry (the registry itself is `telemetry::metrics`).

use crate::api::error::ApiError;
use crate::app::AppState;
use crate::telemetry::metrics::{
    self, AgentIdLabels, HttpLabels, InstancesLabels, Metrics, RouteLabels,
};
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flotilla_core::auth::Permission;
use flotilla_core::id::TenantId;
use std::collections::BTreeSet;
use std::time::Instant;

const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Middleware: counts and times each request by its route template (bounded labels).
pub(crate) async fn track_http(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let m = &state.metrics;
    m.http_requests
        .get_or_create(&HttpLabels {
            route: route.clone(),
            method: method.clone(),
            status: response.status().as_u16().to_string(),
        })
        .inc();
    m.http_duration
        .get_or_create(&RouteLabels { route, method })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: the classic Prometheus text format, or OpenMetrics when the scraper asks for
/// it. Needs a key of the platform (default) tenant that may read the fleet unless
/// `[telemetry] metrics_public` is set; the key is checked by the same path as every `/v1`
/// route (throttle of failed attempts, audit, rate limits).
pub(crate) async fn serve_metrics(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    if !state.config.telemetry.metrics_public {
        let header = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let source = super::authn::client_source(&state, &request);
        let caller = state
            .access
            .authenticate(source, header, request.uri().path())
            .await?;
        // Every tenant's series are here: the platform's keys only.
        let platform = caller.tenant_id == TenantId::DEFAULT
            && caller.task.is_none()
            && caller.role.allows(Permission::ReadFleet);
        if !platform {
            return Err(ApiError::Forbidden(
                "/metrics shows every tenant's figures: it needs a key of the platform (default) \
                 tenant that may read the fleet (viewer, operator or admin), or \
                 telemetry.metrics_public = true"
                    .to_owned(),
            ));
        }
    }
    refresh(&state).await;
    let text = state
        .metrics
        .encode_openmetrics()
        .map_err(|e| ApiError::Internal(format!("cannot encode metrics: {e}")))?;
    let wants_openmetrics = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let (body, content_type) = if wants_openmetrics {
        (text, OPENMETRICS)
    } else {
        (metrics::openmetrics_to_classic(&text), CLASSIC)
    };
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// Sets the state gauges from the registry and the store.
async fn refresh(state: &AppState) {
    let m: &Metrics = &state.metrics;
    let mut types: BTreeSet<String> = state.config.pools.iter().map(|p| p.name.clone()).collect();
    types.extend(state.registry.types());
    let queued = match state.store.queued_by_type(None).await {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(error = %e, "Metrics: cannot read queue lengths");
            m.store_errors.inc();
            Default::default()
        }
    };
    types.extend(queued.keys().cloned());
    m.waiters_parked
        .set(i64::try_from(state.waiters.parked()).unwrap_or(i64::MAX));
    let pool = state.store.pool_stats();
    for (label, n) in [("open", pool.open), ("idle", pool.idle), ("max", pool.max)] {
        m.store_connections
            .get_or_create(&crate::telemetry::metrics::ConnectionLabels {
                state: label.to_owned(),
            })
            .set(i64::from(n));
    }
    m.agents.clear();
    m.agent_load.clear();
    m.success_rate.clear();
    m.queue_length.clear();
    m.pool_desired.clear();
    for agent_type in &types {
        let labels = Metrics::agent_type(agent_type);
        m.queue_length
            .get_or_create(&labels)
            .set(i64::try_from(queued.get(agent_type).copied().unwrap_or(0)).unwrap_or(i64::MAX));
        for (status, n) in state.registry.counts(agent_type).by_status {
            m.agents
                .get_or_create(&InstancesLabels {
                    r#type: agent_type.clone(),
                    status: status.as_str().to_owned(),
                })
                .set(i64::from(n));
        }
        if let Some(rate) = state.registry.success_rate(agent_type) {
            m.success_rate.get_or_create(&labels).set(rate);
        }
        if let Some(scaling) = state.scaling.get(agent_type) {
            m.pool_desired
                .get_or_create(&labels)
                .set(i64::from(scaling.desired));
        }
    }
    for agent in state.registry.list() {
        m.agent_load
            .get_or_create(&AgentIdLabels {
                agent_id: agent.id.to_string(),
            })
            .set(i64::from(agent.load));
    }
    refresh_budgets(state).await;
}

/// Sets each tenant budget's utilisation (spent over limit in its current window).
async fn refresh_budgets(state: &AppState) {
    let Some(utilisation) = state
        .gateway
        .budgets
        .utilisation(state.clock.now(), &state.metrics)
        .await
    else {
        return;
    };
    let m: &Metrics = &state.metrics;
    m.budget_utilisation.clear();
    for (budget, ratio) in utilisation {
        m.budget_utilisation
            .get_or_create(&crate::telemetry::metrics::BudgetLabels {
                tenant: budget.tenant_id.to_string(),
                period: budget.period.as_str().to_owned(),
            })
            .set(ratio);
    }
}
