//! Task traces (docs/design.md §11): one OpenTelemetry trace per task, exported over OTLP/HTTP when
//! `[telemetry.otlp]` is configured.
//!
//! A task's spans are `task.submit` (the submission handler), `task.queued` (from submission, or
//! from the end of a retry's backoff, to the claim), `task.attempt` per dispatch with its child
//! `agent.execute` (the `/execute` call; its span id is the one the agent receives in
//! `traceparent`), and `task.complete` (the terminal write). Every span carries the task's stored
//! trace id, and all but `task.submit` hang under `task.submit` through a remote parent built
//! from the stored trace id and a span id derived from the task id ([`submit_span_id`]). So the
//! spans of one task form one trace in the backend even when the task waited in the queue, was
//! retried, or was claimed by another control-plane replica than the one that accepted it —
//! nothing but the task row is shared.
//!
//! Design: each server owns its [`Traces`] (an SDK tracer provider and its tracer) in
//! `AppState`, and creates OpenTelemetry spans directly through that tracer at the few points
//! of a task's life, with explicit start and end times. It does not go through a global
//! `tracing` subscriber bridged by `tracing-opentelemetry`: the subscriber and the global tracer
//! provider are process-wide, so several in-process servers (tests, `flotilla simulate`) with
//! different endpoints could not each export their own spans, and the binary's log subscriber
//! would have to know about the exporter. Log lines still go through `tracing` and name the
//! `task_id`, which the trace's spans carry as an attribute.
//!
//! Without `[telemetry.otlp]` there is no [`Traces`] (`Option::None` in the state): nothing is
//! allocated or recorded for traces on the dispatch path. With it, spans are batched and sent
//! by the SDK's batch processor from its own thread with reqwest's blocking client, so exporting
//! never blocks a Tokio worker; [`Traces::shutdown`] flushes what is left at shutdown.
//!
//! Model gateway calls get a `gateway.chat` span of their own ([`Traces::gateway_call`]), under
//! the caller's `traceparent` — an agent's call during a task thus joins the task's trace, since
//! the agent received `agent.execute`'s span — and the provider receives `gateway.chat` as its
//! parent.
//!
//! Attributes hold ids, types, counts and outcomes — never task input or output, keys, tokens or
//! signing secrets.

use flotilla_core::Timestamp;
use flotilla_core::config::{Otlp, OtlpProtocol};
use flotilla_core::id::{AgentId, TaskId};
use flotilla_core::retry::DispatchFailure;
use flotilla_core::task::{AttemptResult, Task, TaskStatus};
use flotilla_core::wire::ExecuteResponse;
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags,
    TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// How long shutdown waits for the last spans to be exported.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the trace exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// The HTTP client for the OTLP receiver could not be built.
    #[error("telemetry.otlp: cannot build the HTTP client: {0}")]
    Client(String),
    /// The OTLP exporter refused the settings.
    #[error("telemetry.otlp: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// One server's trace pipeline: its tracer provider (batching exporter) and tracer.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// The spans of one running attempt: `task.attempt` and its child `agent.execute`.
pub struct AttemptTrace {
    attempt: Span,
    execute: Span,
    traceparent: String,
}

impl Traces {
    /// Builds the exporter of `[telemetry.otlp]`; `None` when it is not configured.
    pub fn install(otlp: Option<&Otlp>) -> Result<Option<Self>, TracesError> {
        otlp.map(Self::new).transpose()
    }

    fn new(otlp: &Otlp) -> Result<Self, TracesError> {
        // reqwest's blocking client runs its own runtime and must not be built (or dropped)
        // on a Tokio worker: build it on a plain thread. It is then owned by the batch
        // processor's thread.
        let timeout = otlp.timeout;
        let client = std::thread::spawn(move || {
            // Like every client towards a configured destination (`crate::outbound`): no
            // redirects.
            reqwest::blocking::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .no_proxy()
                .build()
        })
        .join()
        .map_err(|_| TracesError::Client("the builder thread failed".to_owned()))?
        .map_err(|e| TracesError::Client(e.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(otlp.traces_url.clone())
            .with_protocol(match otlp.protocol {
                OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
                OtlpProtocol::HttpJson => Protocol::HttpJson,
            })
            .with_timeout(otlp.timeout)
            .with_headers(
                otlp.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
            )
            .build()?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            // Every task is traced: a task is the unit an operator looks up, and a sampled-out
            // submission would leave its later spans without a parent.
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(
                Resource::builder()
                    .with_service_name(otlp.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("flotilla");
        Ok(Self { provider, tracer })
    }

    /// Records `task.submit` for a task just created, from `started` (the handler's start) to
    /// now. Its parent is the submitter's span when the request carried a `traceparent`.
    pub fn submitted(
        &self,
        task: &Task,
        traceparent: Option<&str>,
        started: Timestamp,
        now: Timestamp,
    ) {
        let Some(trace_id) = trace_id(task) else {
            return;
        };
        let parent = traceparent
            .and_then(parse_traceparent)
            .filter(|(incoming, _)| *incoming == trace_id)
            .map_or_else(Context::new, |(incoming, span_id)| {
                remote_parent(incoming, span_id)
            });
        let mut span = self.tracer.build_with_context(
            SpanBuilder::from_name("task.submit")
                .with_kind(SpanKind::Server)
                .with_trace_id(trace_id)
                .with_span_id(submit_span_id(task.id))
                .with_start_time(SystemTime::from(started))
                .with_attributes(task_attributes(task)),
            &parent,
        );
        span.end_with_timestamp(SystemTime::from(now));
    }

    /// Records `task.queued` for a task claimed at `now`: its wait since submission (first
    /// attempt) or since its retry became due.
    pub fn queued(&self, task: &Task, now: Timestamp) {
        let Some(parent) = task_parent(task) else {
            return;
        };
        let since = if task.attempt <= 1 {
            task.created_at
        } else {
            task.not_before.max(task.created_at)
        };
        let wait_ms = (now - since).num_milliseconds().max(0);
        let mut attributes = task_attributes(task);
        attributes.push(KeyValue::new("task.attempt", i64::from(task.attempt)));
        attributes.push(KeyValue::new("task.queue_wait_ms", wait_ms));
        let mut span = self.tracer.build_with_context(
            SpanBuilder::from_name("task.queued")
                .with_kind(SpanKind::Internal)
                .with_start_time(SystemTime::from(since.min(now)))
                .with_attributes(attributes),
            &parent,
        );
        span.end_with_timestamp(SystemTime::from(now));
    }

    /// Starts `task.attempt` and its child `agent.execute` at `now`; the agent is sent
    /// [`AttemptTrace::traceparent`], whose span id is `agent.execute`'s.
    pub fn attempt(&self, task: &Task, agent_id: AgentId, now: Timestamp) -> Option<AttemptTrace> {
        let parent = task_parent(task)?;
        let mut attributes = task_attributes(task);
        attributes.push(KeyValue::new("task.attempt", i64::from(task.attempt)));
        attributes.push(KeyValue::new("agent.id", agent_id.to_string()));
        let attempt = self.tracer.build_with_context(
            SpanBuilder::from_name("task.attempt")
                .with_kind(SpanKind::Internal)
                .with_start_time(SystemTime::from(now))
                .with_attributes(attributes),
            &parent,
        );
        let attempt_context = attempt.span_context().clone();
        let execute = self.tracer.build_with_context(
            SpanBuilder::from_name("agent.execute")
                .with_kind(SpanKind::Client)
                .with_start_time(SystemTime::from(now))
                .with_attributes([
                    KeyValue::new("http.request.method", "POST"),
                    KeyValue::new("agent.id", agent_id.to_string()),
                    KeyValue::new("agent.type", task.agent_type.clone()),
                ]),
            &Context::new().with_remote_span_context(attempt_context),
        );
        let context = execute.span_context();
        let traceparent = format!("00-{}-{}-01", context.trace_id(), context.span_id());
        Some(AttemptTrace {
            attempt,
            execute,
            traceparent,
        })
    }

    /// Records `task.complete` for a task that reached a terminal state, written at `now`.
    pub fn completed(&self, task: &Task, now: Timestamp) {
        let Some(parent) = task_parent(task) else {
            return;
        };
        let finished = task.finished_at.unwrap_or(task.updated_at).min(now);
        let mut attributes = task_attributes(task);
        attributes.push(KeyValue::new("task.status", task.status.as_str()));
        attributes.push(KeyValue::new("task.attempts", i64::from(task.attempt)));
        attributes.push(KeyValue::new(
            "task.duration_ms",
            (finished - task.created_at).num_milliseconds().max(0),
        ));
        let status = if task.status == TaskStatus::Succeeded {
            Status::Ok
        } else {
            Status::error(task.error.clone().unwrap_or_default())
        };
        let mut span = self.tracer.build_with_context(
            SpanBuilder::from_name("task.complete")
                .with_kind(SpanKind::Internal)
                .with_start_time(SystemTime::from(finished))
                .with_attributes(attributes)
                .with_status(status),
            &parent,
        );
        span.end_with_timestamp(SystemTime::from(now));
    }

    /// Exports the spans still buffered and stops the exporter (at shutdown). Runs on a blocking
    /// thread: the SDK's flush waits for the batch processor's thread.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        match tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
            .await
        {
            Ok(Ok(())) => tracing::debug!("Traces flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "Could not flush the last traces"),
            Err(e) => tracing::warn!(error = %e, "Could not flush the last traces"),
        }
    }
}

impl AttemptTrace {
    /// The W3C `traceparent` sent to the agent: the task's trace, `agent.execute`'s span.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// Ends `agent.execute` at `now` with the call's outcome; `task.attempt` ends when the
    /// scheduler has decided what follows ([`AttemptSpan::finish`]).
    pub fn call_ended(
        mut self,
        outcome: &Result<ExecuteResponse, DispatchFailure>,
        now: Timestamp,
    ) -> AttemptSpan {
        let (label, status) = match outcome {
            Ok(_) => ("success", Status::Ok),
            Err(failure) => (
                match failure {
                    DispatchFailure::Timeout => "timeout",
                    DispatchFailure::Status { .. } => "status",
                    DispatchFailure::Connect { .. } => "connect",
                    DispatchFailure::Refused(_) => "egress_refused",
                    DispatchFailure::Redirect { .. } => "redirect",
                    DispatchFailure::TooLarge { .. } => "too_large",
                    DispatchFailure::InvalidResponse(_) => "invalid_response",
                },
                Status::error(failure.describe()),
            ),
        };
        match outcome {
            Err(DispatchFailure::Status { code, .. } | DispatchFailure::Redirect { code }) => self
                .execute
                .set_attribute(KeyValue::new("http.response.status_code", i64::from(*code))),
            Ok(_) => self
                .execute
                .set_attribute(KeyValue::new("http.response.status_code", 200_i64)),
            Err(_) => {}
        }
        self.execute.set_status(status.clone());
        self.execute.end_with_timestamp(SystemTime::from(now));
        self.attempt
            .set_attribute(KeyValue::new("attempt.outcome", label));
        self.attempt.set_status(status);
        AttemptSpan {
            attempt: self.attempt,
        }
    }
}

/// A model gateway call's `gateway.chat` span (server kind: the caller's span, when its
/// `traceparent` came in, is the parent; the provider receives this span as its parent).
pub struct GatewaySpan {
    span: Span,
    traceparent: String,
}

impl Traces {
    /// Starts `gateway.chat` at `started`, under the caller's `traceparent` when it sent one.
    pub fn gateway_call(&self, traceparent: Option<&str>, started: Timestamp) -> GatewaySpan {
        let parent = traceparent
            .and_then(parse_traceparent)
            .map_or_else(Context::new, |(trace, span)| remote_parent(trace, span));
        let span = self.tracer.build_with_context(
            SpanBuilder::from_name("gateway.chat")
                .with_kind(SpanKind::Server)
                .with_start_time(SystemTime::from(started)),
            &parent,
        );
        let context = span.span_context();
        let traceparent = format!("00-{}-{}-01", context.trace_id(), context.span_id());
        GatewaySpan { span, traceparent }
    }
}

impl GatewaySpan {
    /// The `traceparent` for the provider: this span as the parent.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// Ends the span at `now` with the call's usage record (ids, model, tokens, cost, outcome —
    /// never the prompt or the answer).
    pub fn finish(mut self, record: &flotilla_core::usage::UsageRecord, now: Timestamp) {
        let t = &record.tokens;
        let mut attributes = vec![
            KeyValue::new(
                "gen_ai.request.model",
                record
                    .requested_model
                    .clone()
                    .unwrap_or_else(|| record.model.clone()),
            ),
            KeyValue::new("gen_ai.response.model", record.model.clone()),
            KeyValue::new("gen_ai.provider.name", record.provider.clone()),
            KeyValue::new(
                "gen_ai.usage.input_tokens",
                i64::try_from(t.input_tokens).unwrap_or(i64::MAX),
            ),
            KeyValue::new(
                "gen_ai.usage.output_tokens",
                i64::try_from(t.output_tokens).unwrap_or(i64::MAX),
            ),
            KeyValue::new("tenant.id", record.tenant_id.to_string()),
            KeyValue::new("usage.status", record.status.as_str()),
            KeyValue::new("usage.estimated", record.estimated),
        ];
        if let Some(cost) = record.cost {
            attributes.push(KeyValue::new("usage.cost_usd", cost.to_string()));
        }
        if let Some(task) = record.task_id {
            attributes.push(KeyValue::new("task.id", task.to_string()));
        }
        for a in attributes {
            self.span.set_attribute(a);
        }
        let status = match record.status {
            flotilla_core::usage::UsageStatus::Ok => Status::Ok,
            other => Status::error(other.as_str()),
        };
        self.span.set_status(status);
        self.span.end_with_timestamp(SystemTime::from(now));
    }
}

/// A `task.attempt` whose agent call has ended.
pub struct AttemptSpan {
    attempt: Span,
}

impl AttemptSpan {
    /// Ends `task.attempt` at `now`, saying what follows the attempt.
    pub fn finish(mut self, result: &AttemptResult, now: Timestamp) {
        let next = match result {
            AttemptResult::Succeeded { .. } => "succeeded",
            AttemptResult::Retry { .. } => "retry",
            AttemptResult::Terminal { .. } => "terminal",
        };
        self.attempt
            .set_attribute(KeyValue::new("attempt.next", next));
        self.attempt.end_with_timestamp(SystemTime::from(now));
    }
}

/// The span id of a task's `task.submit`, derived from the task id so that any replica can
/// parent the task's later spans to it without storing it: the low 8 bytes of the UUIDv7, which
/// are random.
pub(crate) fn submit_span_id(task: TaskId) -> SpanId {
    let bytes = task.as_uuid().as_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    if low == [0; 8] {
        low[7] = 1;
    }
    SpanId::from_bytes(low)
}

fn trace_id(task: &Task) -> Option<TraceId> {
    task.trace_id
        .as_deref()
        .and_then(|hex| TraceId::from_hex(hex).ok())
        .filter(|id| *id != TraceId::INVALID)
}

/// `task.submit` of `task` as a remote parent.
fn task_parent(task: &Task) -> Option<Context> {
    Some(remote_parent(trace_id(task)?, submit_span_id(task.id)))
}

fn remote_parent(trace_id: TraceId, span_id: SpanId) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// The trace and parent span ids of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn parse_traceparent(header: &str) -> Option<(TraceId, SpanId)> {
    let mut parts = header.trim().split('-');
    let _version = parts.next()?;
    let trace_id = TraceId::from_hex(parts.next().filter(|p| p.len() == 32)?).ok()?;
    let span_id = SpanId::from_hex(parts.next().filter(|p| p.len() == 16)?).ok()?;
    (trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then_some((trace_id, span_id))
}

fn task_attributes(task: &Task) -> Vec<KeyValue> {
    vec![
        KeyValue::new("task.id", task.id.to_string()),
        KeyValue::new("tenant.id", task.tenant_id.to_string()),
        KeyValue::new("agent.type", task.agent_type.clone()),
        KeyValue::new("task.priority", i64::from(task.priority)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let parsed = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            parsed.map(|(t, s)| (t.to_string(), s.to_string())),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                "00f067aa0ba902b7".to_owned()
            ))
        );
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
    }

    #[test]
    fn the_submit_span_id_is_stable_per_task() {
        let task = TaskId::from_uuid(uuid::Uuid::now_v7());
        assert_eq!(submit_span_id(task), submit_span_id(task));
        assert_ne!(
            submit_span_id(task),
            submit_span_id(TaskId::from_uuid(uuid::Uuid::now_v7()))
        );
        assert_ne!(submit_span_id(task), SpanId::INVALID);
    }
}
