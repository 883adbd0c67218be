//! What a finished (or refused) call leaves behind: budgets and limits settled with the actual
//! usage, the usage record in the ledger, the gateway's metrics, and budget thresholds announced.

use super::Gateway;
use super::budgets::Crossed;
use super::call::Call;
use crate::telemetry::metrics::{GatewayLabels, ModelLabels, ModelTokenLabels};
use flotilla_core::Timestamp;
use flotilla_core::model::ModelSpec;
use flotilla_core::money::Money;
use flotilla_core::usage::{TokenUsage, UsageRecord, UsageStatus};

/// Records a call refused before it reached a provider.
pub(super) fn reject(state: &Gateway, call: &Call, spec: &ModelSpec) {
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
    state.ledger.record(record);
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
fn count(state: &Gateway, record: &UsageRecord) {
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
    // The alert engine's windows: per model (outcome, duration, tokens) and per tenant.
    state
        .recent
        .record_gateway_call(&crate::telemetry::recent::GatewayCall {
            tenant: record.tenant_id,
            model: &record.model,
            task: record.task_id,
            ok: match record.status {
                UsageStatus::Ok => Some(true),
                UsageStatus::Error => Some(false),
                UsageStatus::Cancelled | UsageStatus::Rejected => None,
            },
            seconds: record.latency_ms as f64 / 1000.0,
            tokens: t.total(),
            input: t.input_tokens,
            output: t.output_tokens,
        });
}

/// Settles budgets and limits with the actual usage, writes the usage record, counts it, and
/// announces thresholds crossed. Returns the cost (when known).
pub(super) async fn finish(
    state: &Gateway,
    call: &mut Call,
    served: &ModelSpec,
    tokens: TokenUsage,
    estimated: bool,
    status: UsageStatus,
) -> Option<Money> {
    let now = state.clock.now();
    let cost = served.prices.cost(&tokens);
    let actual = cost.unwrap_or(Money::ZERO);
    let gw = state;
    if let Some(t) = call.taken.take() {
        gw.limits.reconcile(&t, tokens.total(), actual, now).await;
    }
    if let Some(hold) = call.hold.take() {
        if actual > hold.reserved {
            overshoot(state, call, served, hold.reserved, actual, now);
        }
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
    if let Some(span) = call.span.take() {
        span.finish(&record, now);
    }
    count(state, &record);
    gw.ledger.record(record);
    cost
}

/// A call that cost more than its reservation (a provider counting more tokens than the request
/// can hold: an image counted dearer than `IMAGE_INPUT_TOKENS`, say): logged, counted, and an
/// event of the tenant's.
fn overshoot(
    state: &Gateway,
    call: &Call,
    served: &ModelSpec,
    reserved: Money,
    actual: Money,
    now: Timestamp,
) {
    let over = actual - reserved;
    let message = format!(
        "tenant {} overshot a budget reservation: a call of {} cost ${actual}, ${over} more than \
         the ${reserved} reserved for it",
        call.tenant, served.name
    );
    tracing::warn!(tenant = %call.tenant, model = %served.name, "{message}");
    let labels = ModelLabels {
        model: served.name.clone(),
    };
    state.metrics.budget_overshoots.get_or_create(&labels).inc();
    state
        .metrics
        .budget_overshoot_usd
        .get_or_create(&labels)
        .inc_by(over.as_f64_usd());
    state.events.emit(
        now,
        flotilla_core::event::EventKind::Budget,
        "",
        None,
        Some(call.tenant),
        message,
    );
}

/// A budget threshold reached: an event and a notification, once per window.
fn announce(state: &Gateway, crossed: &Crossed, now: Timestamp) {
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
        Some(b.tenant_id),
        message.clone(),
    );
    let severity = if crossed.threshold >= 100 {
        flotilla_core::alert::Severity::Critical
    } else {
        flotilla_core::alert::Severity::Warning
    };
    let notification = crate::notify::Notification {
        rule: "budget_threshold".to_owned(),
        agent_type: None,
        model: None,
        tenant: Some(b.tenant_id),
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
    crate::notify::send_all(&state.notifications, &notification);
}
