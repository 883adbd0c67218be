//! The model gateway (DESIGN.md §7): an OpenAI-compatible `POST /v1/chat/completions` (JSON and
//! server-sent events) and `GET /v1/models`, in front of the configured providers.
//!
//! A call goes: authenticate (API key or per-task token) → validate → choose the model (`auto`
//! asks [`flotilla_core::recommend`]) → take the rate limits → reserve the price ceiling in the
//! tenant's budgets (`block` refuses with 402, `downgrade` walks the model's `downgrade_to`
//! chain) → call the provider, retrying and falling back → settle the budgets and limits with
//! the actual usage → write the usage record (batched) → answer. No path spends without the
//! budget check: it is the only way to a provider.

pub mod budgets;
pub mod error;
pub mod ledger;
pub mod limits;
pub mod providers;
pub mod request;
pub mod stream;

use crate::app::AppState;
use crate::auth::Caller;
use crate::telemetry::metrics::{GatewayLabels, ModelLabels, ModelTokenLabels, ProviderLabels};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use budgets::{Budgets, Crossed, Hold, Refusal};
use error::GatewayError;
use flotilla_core::Timestamp;
use flotilla_core::auth::Permission;
use flotilla_core::budget::Enforcement;
use flotilla_core::config::{ApiKeySource, Gateway as GatewayConfig, ProviderKind};
use flotilla_core::id::{TaskId, TenantId};
use flotilla_core::model::{ModelSpec, UpstreamFailure};
use flotilla_core::money::Money;
use flotilla_core::retry::BackoffPolicy;
use flotilla_core::usage::{TokenUsage, UsageRecord, UsageStatus};
use ledger::Ledger;
use limits::{Limits, Taken};
use providers::{ProviderClient, UpstreamError, UpstreamReply, UpstreamRequest};
use request::ChatRequest;
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::task::TaskTracker;

/// How long a provider key read from the vault is reused (a rotation applies within this).
const KEY_CACHE_TTL: Duration = Duration::from_secs(60);
/// Longest downgrade chain followed.
const MAX_DOWNGRADES: usize = 8;

/// The gateway's state: provider clients, the ledger, budgets and limits.
pub struct Gateway {
    config: GatewayConfig,
    clients: HashMap<String, ProviderClient>,
    keys: Mutex<HashMap<String, (Instant, SecretString)>>,
    pub ledger: Ledger,
    pub budgets: Budgets,
    limits: Limits,
    /// Streams being relayed; shutdown waits for them.
    pub streams: TaskTracker,
    /// Agent type of tasks whose tokens call models (for usage records).
    task_types: Mutex<HashMap<TaskId, Option<String>>>,
}

/// Why the gateway could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client of provider `{provider}`: {source}")]
pub struct GatewayBuildError {
    provider: String,
    source: reqwest::Error,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        ledger: Ledger,
        budgets: Budgets,
    ) -> Result<Gateway, GatewayBuildError> {
        let mut clients = HashMap::new();
        for (name, provider) in &config.providers {
            let client = ProviderClient::new(provider).map_err(|source| GatewayBuildError {
                provider: name.clone(),
                source,
            })?;
            clients.insert(name.clone(), client);
        }
        Ok(Gateway {
            limits: Limits::new(config.limits),
            config,
            clients,
            keys: Mutex::default(),
            ledger,
            budgets,
            streams: TaskTracker::new(),
            task_types: Mutex::default(),
        })
    }

    pub fn models(&self) -> &[ModelSpec] {
        &self.config.models
    }

    /// The provider's API key, resolved at use (vault references are cached for a minute).
    async fn api_key(
        &self,
        state: &AppState,
        provider: &str,
    ) -> Result<Option<SecretString>, GatewayError> {
        let Some(p) = self.config.providers.get(provider) else {
            return Ok(None);
        };
        let ProviderKind::OpenAi {
            api_key: Some(source),
            ..
        } = &p.kind
        else {
            return Ok(None);
        };
        match source {
            ApiKeySource::Env(var) => Ok(std::env::var(var).ok().map(SecretString::from)),
            ApiKeySource::Vault(reference) => {
                if let Ok(keys) = self.keys.lock()
                    && let Some((at, key)) = keys.get(provider)
                    && at.elapsed() < KEY_CACHE_TTL
                {
                    return Ok(Some(key.clone()));
                }
                let key = state
                    .vault
                    .resolve(TenantId::DEFAULT, reference)
                    .await
                    .map_err(|e| {
                        GatewayError::upstream(format!(
                            "the API key of provider `{provider}` could not be read from the vault: {e}"
                        ))
                    })?;
                if let Ok(mut keys) = self.keys.lock() {
                    keys.insert(provider.to_owned(), (Instant::now(), key.clone()));
                }
                Ok(Some(key))
            }
        }
    }

    /// The agent type of a task (cached), for usage records of per-task tokens.
    async fn task_type(&self, state: &AppState, tenant: TenantId, task: TaskId) -> Option<String> {
        if let Ok(types) = self.task_types.lock()
            && let Some(t) = types.get(&task)
        {
            return t.clone();
        }
        let found = state
            .store
            .get_task(Some(tenant), task)
            .await
            .ok()
            .flatten()
            .map(|t| t.agent_type);
        if let Ok(mut types) = self.task_types.lock() {
            if types.len() > 10_000 {
                types.clear();
            }
            types.insert(task, found.clone());
        }
        found
    }
}

/// The gateway's routes (under `/v1`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/chat/completions", post(chat_completions))
        .route("/models", get(list_models))
}

/// `GET /v1/models`: the configured models in OpenAI's list shape, with Flotilla's details.
async fn list_models(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, GatewayError> {
    caller.require(Permission::CallModels, "list models")?;
    let data: Vec<serde_json::Value> = state
        .gateway
        .models()
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": m.provider,
                "flotilla": {
                    "provider": m.provider,
                    "upstream": m.upstream,
                    "simulated": m.provider == flotilla_core::model::SIMULATED_PROVIDER,
                    "prices_per_million_tokens": m.prices,
                    "quality": m.quality,
                    "speed": m.speed,
                    "fallbacks": m.fallbacks,
                    "downgrade_to": m.downgrade_to,
                }
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({"object": "list", "data": data})).into_response())
}

/// Everything known about a call before it goes upstream.
struct Call {
    tenant: TenantId,
    key_id: String,
    task: Option<TaskId>,
    agent_type: Option<String>,
    requested: String,
    started: Instant,
    at: Timestamp,
}

/// The model a call ended up with, and why it differs from the one asked for.
struct Chosen {
    spec: ModelSpec,
    hold: Option<Hold>,
    downgraded_from: Option<(String, String)>,
}

/// `POST /v1/chat/completions`.
async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    caller.require(Permission::CallModels, "call models")?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            GatewayError::from(crate::api::error::ApiError::PayloadTooLarge {
                limit: state.config.max_body_bytes,
            })
        } else {
            GatewayError::invalid("body", format!("the body could not be read: {e}"))
        }
    })?;
    let request = ChatRequest::parse(body)?;
    let gw = state.gateway.clone();
    let now = state.clock.now();
    let agent_type = match caller.task {
        Some(task) => gw.task_type(&state, caller.tenant_id, task).await,
        None => None,
    };
    let call = Call {
        tenant: caller.tenant_id,
        key_id: caller.key_id.clone(),
        task: caller.task,
        agent_type,
        requested: request.model.clone(),
        started: Instant::now(),
        at: now,
    };
    let spec = resolve_model(gw.models(), &request)?;
    let max_output = request
        .max_output_tokens
        .unwrap_or(spec.default_max_output_tokens)
        .saturating_mul(request.choices);
    let ceiling = |s: &ModelSpec| {
        s.prices
            .ceiling(request.input_tokens, max_output)
            .unwrap_or(Money::ZERO)
    };
    let reserved_tokens = request.input_tokens.saturating_add(max_output);
    let taken = if gw.limits.is_off() {
        None
    } else {
        match gw.limits.take(
            call.tenant,
            &call.key_id,
            reserved_tokens,
            ceiling(&spec),
            now,
        ) {
            Ok(t) => Some(t),
            Err(limited) => {
                reject(&state, &call, &spec);
                return Err(GatewayError::rate_limited(
                    limited.message,
                    limited.retry_after.as_secs().max(1),
                ));
            }
        }
    };
    let chosen = match choose_within_budget(&state, &call, spec, &ceiling).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(t) = &taken {
                gw.limits.settle(t, 0, Money::ZERO, state.clock.now());
            }
            return Err(e);
        }
    };
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    forward(state, call, request, chosen, taken, traceparent).await
}

/// The model asked for, or for `auto` the recommended one; 404 for an unknown model.
fn resolve_model(models: &[ModelSpec], request: &ChatRequest) -> Result<ModelSpec, GatewayError> {
    if request.model == "auto" {
        let profile = flotilla_core::recommend::RecommendRequest::default();
        return flotilla_core::recommend::recommend(models, &profile)
            .ok()
            .and_then(|r| {
                models
                    .iter()
                    .find(|m| m.name == r.recommended_model)
                    .cloned()
            })
            .ok_or_else(|| GatewayError::model_not_found("auto", &[]));
    }
    models
        .iter()
        .find(|m| m.name == request.model)
        .cloned()
        .ok_or_else(|| {
            let known: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
            GatewayError::model_not_found(&request.model, &known)
        })
}

/// Reserves the call's ceiling in the tenant's budgets, walking the downgrade chain when a
/// `downgrade` budget is spent.
async fn choose_within_budget(
    state: &AppState,
    call: &Call,
    mut spec: ModelSpec,
    ceiling: &impl Fn(&ModelSpec) -> Money,
) -> Result<Chosen, GatewayError> {
    let gw = &state.gateway;
    let mut downgraded_from: Option<(String, String)> = None;
    for _ in 0..=MAX_DOWNGRADES {
        let refusal: Refusal = match gw
            .budgets
            .reserve(call.tenant, ceiling(&spec), call.at)
            .await?
        {
            Ok(hold) => {
                return Ok(Chosen {
                    spec,
                    hold,
                    downgraded_from,
                });
            }
            Err(refusal) => refusal,
        };
        let cheaper = (refusal.enforcement == Enforcement::Downgrade)
            .then_some(spec.downgrade_to.as_ref())
            .flatten()
            .and_then(|name| gw.models().iter().find(|m| &m.name == name))
            .cloned();
        match cheaper {
            Some(next) => {
                state
                    .metrics
                    .gateway_downgrades
                    .get_or_create(&ModelLabels {
                        model: spec.name.clone(),
                    })
                    .inc();
                if downgraded_from.is_none() {
                    downgraded_from = Some((spec.name.clone(), refusal.exceeded.message()));
                }
                spec = next;
            }
            None => {
                reject(state, call, &spec);
                let mut message = refusal.exceeded.message();
                if refusal.enforcement == Enforcement::Downgrade {
                    message.push_str(&format!(
                        "; `{}` has no cheaper model to downgrade to",
                        spec.name
                    ));
                }
                return Err(GatewayError::budget_exceeded(message));
            }
        }
    }
    reject(state, call, &spec);
    Err(GatewayError::budget_exceeded(
        "the downgrade chain is too long".to_owned(),
    ))
}

/// Records a call refused before it reached a provider.
fn reject(state: &AppState, call: &Call, spec: &ModelSpec) {
    let record = usage_record(
        call,
        spec,
        TokenUsage::default(),
        Some(Money::ZERO),
        false,
        UsageStatus::Rejected,
        state.clock.now(),
    );
    count(state, &record);
    state.gateway.ledger.record(record);
}

fn usage_record(
    call: &Call,
    spec: &ModelSpec,
    tokens: TokenUsage,
    cost: Option<Money>,
    estimated: bool,
    status: UsageStatus,
    now: Timestamp,
) -> UsageRecord {
    UsageRecord {
        id: uuid::Uuid::now_v7(),
        tenant_id: call.tenant,
        task_id: call.task,
        key_id: call.key_id.clone(),
        agent_type: call.agent_type.clone(),
        model: spec.name.clone(),
        requested_model: (call.requested != spec.name).then(|| call.requested.clone()),
        provider: spec.provider.clone(),
        tokens,
        cost,
        estimated,
        latency_ms: u64::try_from(call.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        status,
        created_at: now,
    }
}

/// Updates the gateway's metrics with a finished call.
fn count(state: &AppState, record: &UsageRecord) {
    let m = &state.metrics;
    m.gateway_requests
        .get_or_create(&GatewayLabels {
            model: record.model.clone(),
            provider: record.provider.clone(),
            status: record.status.as_str().to_owned(),
        })
        .inc();
    let t = &record.tokens;
    for (kind, n) in [
        ("input", t.input_tokens),
        ("cached_input", t.cached_input_tokens),
        ("output", t.output_tokens),
        ("reasoning", t.reasoning_tokens),
    ] {
        if n > 0 {
            m.gateway_tokens
                .get_or_create(&ModelTokenLabels {
                    model: record.model.clone(),
                    kind: kind.to_owned(),
                })
                .inc_by(n);
        }
    }
    if let Some(cost) = record.cost
        && !cost.is_zero()
    {
        m.gateway_cost
            .get_or_create(&ModelLabels {
                model: record.model.clone(),
            })
            .inc_by(cost.as_f64_usd());
    }
    if let Some(agent_type) = &record.agent_type {
        for (direction, n) in [("input", t.input_tokens), ("output", t.output_tokens)] {
            if n > 0 {
                m.token_usage
                    .get_or_create(&crate::telemetry::metrics::TokenLabels {
                        agent_type: agent_type.clone(),
                        model: record.model.clone(),
                        direction: direction.to_owned(),
                    })
                    .inc_by(n);
            }
        }
    }
    if t.total() > 0 {
        state.recent.record_tokens(record.tenant_id, t.total());
    }
}

/// Calls the provider (retrying, then falling back) and answers.
async fn forward(
    state: AppState,
    call: Call,
    request: ChatRequest,
    chosen: Chosen,
    taken: Option<Taken>,
    traceparent: Option<String>,
) -> Result<Response, GatewayError> {
    let gw = state.gateway.clone();
    let mut candidates: Vec<ModelSpec> = vec![chosen.spec.clone()];
    for name in &chosen.spec.fallbacks {
        if let Some(m) = gw.models().iter().find(|m| &m.name == name) {
            candidates.push(m.clone());
        }
    }
    let mut last: Option<UpstreamError> = None;
    let mut reply = None;
    'models: for (i, spec) in candidates.iter().enumerate() {
        if i > 0 {
            state
                .metrics
                .gateway_fallbacks
                .get_or_create(&ModelLabels {
                    model: candidates[i - 1].name.clone(),
                })
                .inc();
            tracing::info!(from = %candidates[i - 1].name, to = %spec.name, error = %last.as_ref().map(|e| e.message.as_str()).unwrap_or(""), "Falling back to another model");
        }
        let Some(client) = gw.clients.get(&spec.provider) else {
            continue;
        };
        let Some(provider) = gw.config.providers.get(&spec.provider) else {
            continue;
        };
        let key = match gw.api_key(&state, &spec.provider).await {
            Ok(k) => k,
            Err(e) => {
                last = Some(UpstreamError::connection(e.message));
                continue;
            }
        };
        let upstream = UpstreamRequest {
            body: request.upstream_body(&spec.upstream),
            stream: request.stream,
            traceparent: traceparent.clone(),
        };
        let policy = BackoffPolicy {
            base: provider.retry_base,
            max: provider.retry_base.saturating_mul(32),
        };
        for attempt in 0..=provider.max_retries {
            if attempt > 0 {
                let jitter: f64 = rand::random();
                tokio::time::sleep(policy.delay(i32::try_from(attempt).unwrap_or(1), jitter)).await;
            }
            let t0 = Instant::now();
            match client.call(&upstream, key.as_ref()).await {
                Ok(r) => {
                    state
                        .metrics
                        .gateway_first_token
                        .get_or_create(&ProviderLabels {
                            provider: spec.provider.clone(),
                        })
                        .observe(t0.elapsed().as_secs_f64());
                    reply = Some((spec.clone(), r, t0));
                    break 'models;
                }
                Err(e) => {
                    let retry = spec.falls_back_on(e.failure);
                    tracing::debug!(model = %spec.name, attempt, error = %e, retry, "Provider call failed");
                    if !retry {
                        // The provider refused this request itself (400, 401, 404…): trying
                        // again or elsewhere would not help.
                        let status = match e.failure {
                            UpstreamFailure::Status(s) => s,
                            _ => 502,
                        };
                        let error = client_error(status, e.message.clone());
                        finish(
                            &state,
                            &call,
                            spec,
                            TokenUsage::default(),
                            false,
                            UsageStatus::Error,
                            taken.as_ref(),
                            chosen.hold,
                        )
                        .await;
                        return Err(error);
                    }
                    last = Some(e);
                }
            }
        }
    }
    let Some((served, reply, t0)) = reply else {
        let error = match &last {
            Some(e) if e.failure == UpstreamFailure::Timeout => GatewayError::upstream_timeout(
                format!("every attempt timed out; last: {}", e.message),
            ),
            Some(e) => GatewayError::upstream(format!("every attempt failed; last: {}", e.message)),
            None => GatewayError::upstream("no provider could take the call".to_owned()),
        };
        finish(
            &state,
            &call,
            &chosen.spec,
            TokenUsage::default(),
            false,
            UsageStatus::Error,
            taken.as_ref(),
            chosen.hold,
        )
        .await;
        return Err(error);
    };
    let downgraded = chosen.downgraded_from.clone();
    match reply {
        UpstreamReply::Complete { body, usage } => {
            state
                .metrics
                .gateway_upstream_duration
                .get_or_create(&ProviderLabels {
                    provider: served.provider.clone(),
                })
                .observe(t0.elapsed().as_secs_f64());
            let (tokens, estimated) = match usage {
                Some(u) => (u, false),
                None => (estimate_from_answer(&request, &body), true),
            };
            let cost = finish(
                &state,
                &call,
                &served,
                tokens,
                estimated,
                UsageStatus::Ok,
                taken.as_ref(),
                chosen.hold,
            )
            .await;
            let body = match &downgraded {
                Some((from, reason)) => annotate(body, from, reason),
                None => body,
            };
            let mut response = Response::new(Body::from(body));
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            decorate(h, &served, downgraded.as_ref(), cost);
            Ok(response)
        }
        UpstreamReply::Stream(chunks) => {
            let hide = !request.client_wants_stream_usage();
            let input_estimate = request.input_tokens;
            let hold = chosen.hold;
            let state2 = state.clone();
            let served2 = served.clone();
            let body = stream::relay(chunks, hide, &gw.streams, move |outcome| async move {
                state2
                    .metrics
                    .gateway_upstream_duration
                    .get_or_create(&ProviderLabels {
                        provider: served2.provider.clone(),
                    })
                    .observe(t0.elapsed().as_secs_f64());
                let (tokens, estimated) = match outcome.usage {
                    Some(u) => (u, false),
                    None => (
                        TokenUsage {
                            input_tokens: input_estimate,
                            output_tokens: outcome.content_chunks,
                            ..TokenUsage::default()
                        },
                        true,
                    ),
                };
                let status = if outcome.cancelled {
                    UsageStatus::Cancelled
                } else if outcome.error.is_some() {
                    UsageStatus::Error
                } else {
                    UsageStatus::Ok
                };
                finish(
                    &state2,
                    &call,
                    &served2,
                    tokens,
                    estimated,
                    status,
                    taken.as_ref(),
                    hold,
                )
                .await;
            });
            let mut response = Response::new(body);
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            // Proxies such as nginx must pass events on at once.
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            decorate(h, &served, downgraded.as_ref(), None);
            Ok(response)
        }
    }
}

/// An upstream refusal passed on with its status (a 4xx the client can fix), or 502.
fn client_error(status: u16, message: String) -> GatewayError {
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(StatusCode::is_client_error)
        .unwrap_or(StatusCode::BAD_GATEWAY);
    GatewayError {
        status,
        kind: if status.is_client_error() {
            "invalid_request_error"
        } else {
            "api_error"
        },
        code: "upstream_refused",
        message,
        param: None,
        retry_after_s: None,
    }
}

/// Headers that say which model served, whether it was downgraded, and (for whole answers) the
/// exact cost.
fn decorate(
    h: &mut HeaderMap,
    served: &ModelSpec,
    downgraded: Option<&(String, String)>,
    cost: Option<Money>,
) {
    if let Ok(v) = HeaderValue::from_str(&served.name) {
        h.insert("x-flotilla-model", v);
    }
    if served.provider == flotilla_core::model::SIMULATED_PROVIDER {
        h.insert("x-flotilla-simulated", HeaderValue::from_static("true"));
    }
    if let Some((from, _)) = downgraded
        && let Ok(v) = HeaderValue::from_str(from)
    {
        h.insert("x-flotilla-downgraded-from", v);
    }
    if let Some(cost) = cost
        && let Ok(v) = HeaderValue::from_str(&cost.to_string())
    {
        h.insert("x-flotilla-cost-usd", v);
    }
}

/// Adds `x_flotilla: {downgraded_from, reason}` to a whole answer.
fn annotate(body: Bytes, from: &str, reason: &str) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert(
                "x_flotilla".to_owned(),
                serde_json::json!({"downgraded_from": from, "reason": reason}),
            );
            Bytes::from(serde_json::Value::Object(map).to_string())
        }
        _ => body,
    }
}

/// Token counts of an answer whose provider reported no usage: prompt as estimated, output at
/// about four bytes of text per token.
fn estimate_from_answer(request: &ChatRequest, body: &[u8]) -> TokenUsage {
    let text_len: usize = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("choices").and_then(|c| c.as_array()).cloned())
        .map_or(0, |choices| {
            choices
                .iter()
                .filter_map(|c| c.pointer("/message/content").and_then(|t| t.as_str()))
                .map(str::len)
                .sum()
        });
    TokenUsage {
        input_tokens: request.input_tokens,
        output_tokens: (text_len as u64).div_ceil(4),
        ..TokenUsage::default()
    }
}

/// Settles budgets and limits with the actual usage, writes the usage record, counts it, and
/// announces thresholds crossed. Returns the cost (when known).
#[allow(clippy::too_many_arguments)]
async fn finish(
    state: &AppState,
    call: &Call,
    served: &ModelSpec,
    tokens: TokenUsage,
    estimated: bool,
    status: UsageStatus,
    taken: Option<&Taken>,
    hold: Option<Hold>,
) -> Option<Money> {
    let now = state.clock.now();
    let cost = served.prices.cost(&tokens);
    let actual = cost.unwrap_or(Money::ZERO);
    let gw = &state.gateway;
    if let Some(t) = taken {
        gw.limits.settle(t, tokens.total(), actual, now);
    }
    if let Some(hold) = hold {
        match gw.budgets.settle(hold, actual, now).await {
            Ok(crossed) => {
                for c in crossed {
                    announce(state, &c, now);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, tenant = %call.tenant, "Could not settle a budget reservation");
            }
        }
    }
    let record = usage_record(call, served, tokens, cost, estimated, status, now);
    count(state, &record);
    gw.ledger.record(record);
    cost
}

/// A budget threshold reached: an event and a notification, once per window.
fn announce(state: &AppState, crossed: &Crossed, now: Timestamp) {
    let b = &crossed.budget;
    let message = format!(
        "tenant {} reached {}% of its {} budget: ${} of ${} spent",
        b.tenant_id,
        crossed.threshold,
        b.period.as_str(),
        crossed.spent,
        b.limit
    );
    state.events.emit(
        now,
        flotilla_core::event::EventKind::Budget,
        "",
        None,
        message.clone(),
    );
    let severity = if crossed.threshold >= 100 {
        flotilla_core::alert::Severity::Critical
    } else {
        flotilla_core::alert::Severity::Warning
    };
    let notification = crate::alerts::notify::Notification {
        rule: "budget_threshold".to_owned(),
        agent_type: None,
        status: "firing".to_owned(),
        severity,
        signal: "budget_utilisation".to_owned(),
        value: crossed.spent.ratio(b.limit),
        comparison: ">=".to_owned(),
        threshold: f64::from(crossed.threshold) / 100.0,
        for_s: 0,
        labels: [
            ("tenant".to_owned(), b.tenant_id.to_string()),
            ("period".to_owned(), b.period.as_str().to_owned()),
        ]
        .into_iter()
        .collect(),
        message,
        at: now,
    };
    crate::alerts::notify::send_all(state, &notification);
}
