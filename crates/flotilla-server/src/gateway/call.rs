//! One call of `POST /v1/chat/completions`: validate, choose the model within the tenant's
//! budgets and limits, call the provider (retrying, then falling back), and answer — whole, or as
//! a relayed stream whose usage is settled when it ends.

use super::Gateway;
use super::accounting::{finish, reject};
use super::budgets::{Hold, Refusal};
use super::error::GatewayError;
use super::limits::Taken;
use super::providers::{UpstreamError, UpstreamReply, UpstreamRequest};
use super::request::ChatRequest;
use super::stream;
use crate::auth::Caller;
use crate::telemetry::metrics::{ModelLabels, ProviderLabels};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use flotilla_core::Timestamp;
use flotilla_core::budget::Enforcement;
use flotilla_core::id::{TaskId, TenantId};
use flotilla_core::model::{ModelSpec, UpstreamFailure, chain_ceiling};
use flotilla_core::money::Money;
use flotilla_core::retry::BackoffPolicy;
use flotilla_core::usage::{TokenUsage, UsageStatus};
use std::sync::Arc;
use std::time::Instant;

/// Longest downgrade chain followed.
const MAX_DOWNGRADES: usize = 8;

/// Everything known about a call before it goes upstream.
pub(super) struct Call {
    pub tenant: TenantId,
    pub key_id: String,
    pub task: Option<TaskId>,
    pub agent_type: Option<String>,
    pub requested: String,
    pub started: Instant,
    pub at: Timestamp,
    /// What the call took from the rate limits, settled once.
    pub taken: Option<Taken>,
    /// Its budget reservation, settled once.
    pub hold: Option<Hold>,
    /// Its `gateway.chat` span, when traces are exported.
    pub span: Option<crate::telemetry::traces::GatewaySpan>,
}

/// The model a call ended up with, and why it differs from the one asked for.
struct Chosen {
    spec: ModelSpec,
    downgraded_from: Option<(String, String)>,
}

/// Calls a model through the gateway (OpenAI's chat completions) for `caller`: its limits and
/// budgets apply, the call is recorded in the ledger, and the answer (or stream) is the
/// provider's. `incoming` is the caller's `traceparent`, if any.
pub(crate) async fn chat(
    state: Arc<Gateway>,
    caller: &Caller,
    incoming: Option<&str>,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let request = ChatRequest::parse(body)?;
    let gw = state.clone();
    let now = state.clock.now();
    let agent_type = match caller.task {
        Some(task) => gw.task_type(caller.tenant_id, task).await,
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
        taken: None,
        hold: None,
        span: None,
    };
    let mut call = call;
    let spec = resolve_model(gw.models(), &request)?;
    let max_output = request
        .max_output_tokens
        .unwrap_or(spec.default_max_output_tokens)
        .saturating_mul(request.choices);
    // The worst case over every model that may serve the call, at the most prompt tokens the
    // request can count: what budgets reserve, so that a call cannot settle above it.
    let input_bound = request.input_bound;
    let ceiling = |s: &ModelSpec| chain_ceiling(s, gw.models(), input_bound, max_output);
    let reserved_tokens = request.input_tokens.saturating_add(max_output);
    call.taken = if gw.limits.is_off() {
        None
    } else {
        match gw
            .limits
            .reserve(
                call.tenant,
                &call.key_id,
                reserved_tokens,
                ceiling(&spec).unwrap_or(Money::ZERO),
                now,
            )
            .await
        {
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
    let chosen = match choose_within_budget(&state, &mut call, spec, &ceiling).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(t) = call.taken.take() {
                gw.limits
                    .reconcile(&t, 0, Money::ZERO, state.clock.now())
                    .await;
            }
            return Err(e);
        }
    };
    call.span = state
        .traces
        .as_ref()
        .map(|t| t.gateway_call(incoming, call.at));
    // The provider's parent is our span when traces are exported, else the caller's.
    let traceparent = call
        .span
        .as_ref()
        .map(|s| s.traceparent().to_owned())
        .or_else(|| incoming.map(str::to_owned));
    // The upstream call runs in its own task: a client that hangs up does not cancel a call the
    // provider is already billing, and the call is settled and recorded either way.
    let streams = gw.streams.clone();
    streams
        .spawn(forward(state, call, request, chosen, traceparent))
        .await
        .map_err(|e| GatewayError::internal(format!("the model call's task failed: {e}")))?
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
/// `downgrade` budget is spent. A tenant with a budget may not call a model whose chain has a
/// price missing (unless marked `free`): its cost could not be reserved.
async fn choose_within_budget(
    state: &Gateway,
    call: &mut Call,
    mut spec: ModelSpec,
    ceiling: &impl Fn(&ModelSpec) -> Result<Money, String>,
) -> Result<Chosen, GatewayError> {
    let gw = state;
    let mut downgraded_from: Option<(String, String)> = None;
    for _ in 0..=MAX_DOWNGRADES {
        let worst = match ceiling(&spec) {
            Ok(worst) => worst,
            Err(unpriced) if gw.budgets.any(call.tenant).await? => {
                reject(state, call, &spec);
                return Err(GatewayError::unpriced_model(&spec.name, &unpriced));
            }
            Err(_) => Money::ZERO,
        };
        let refusal: Refusal = match gw.budgets.reserve(call.tenant, worst, call.at).await? {
            Ok(hold) => {
                call.hold = hold;
                return Ok(Chosen {
                    spec,
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

/// Calls the provider (retrying, then falling back) and answers.
async fn forward(
    state: Arc<Gateway>,
    mut call: Call,
    request: ChatRequest,
    chosen: Chosen,
    traceparent: Option<String>,
) -> Result<Response, GatewayError> {
    let gw = state.clone();
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
        let key = match gw.api_key(&spec.provider).await {
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
                            &mut call,
                            spec,
                            TokenUsage::default(),
                            false,
                            UsageStatus::Error,
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
            &mut call,
            &chosen.spec,
            TokenUsage::default(),
            false,
            UsageStatus::Error,
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
                &mut call,
                &served,
                tokens,
                estimated,
                UsageStatus::Ok,
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
            let state2 = state.clone();
            let served2 = served.clone();
            let body = stream::relay(chunks, hide, &gw.streams, move |outcome| async move {
                let mut call = call;
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
                finish(&state2, &mut call, &served2, tokens, estimated, status).await;
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
