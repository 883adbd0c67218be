//! One dispatcher loop per agent type: claim as many queued tasks as there are free slots — for
//! each owner's free slots only tasks of the tenants they may serve, the platform's shared fairly
//! between the tenants with work queued —, start an attempt for each,
//! sleep until woken (submission, freed slot, new instance) or a short poll interval passes
//! (retries whose backoff ends, leases re-queued elsewhere). A type with neither a pool nor an
//! instance has no loop: it ends, and the next registration of the type starts it again.

use crate::fleet::registry::{FreeSlots, Slot};
use crate::scheduler::Scheduler;
use crate::scheduler::dispatch;
use crate::telemetry::metrics::{AgentRequestLabels, Metrics, TokenLabels};
use flotilla_core::fair_share::FairShare;
use flotilla_core::id::TenantId;
use flotilla_core::retry::{BackoffPolicy, Blame, ConnectReason, DispatchFailure, after_failure};
use flotilla_core::task::{AttemptEnd, AttemptResult, Task};
use flotilla_core::task_token::{self, TaskClaims};
use flotilla_core::wire::{ExecuteRequest, ExecuteResponse, ModelGateway};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long an idle dispatcher sleeps without a wake-up before looking at the queue again.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Most tenants with queued work one claim round shares slots between (the first in id order).
const MAX_TENANTS_PER_ROUND: u32 = 10_000;

/// The set of running dispatcher loops and the tracker of their attempts.
pub(crate) struct Dispatchers {
    started: Mutex<HashSet<String>>,
    /// Dispatcher loops.
    loops: TaskTracker,
    /// In-flight attempts; waited for (up to a grace period) at shutdown.
    pub attempts: TaskTracker,
    shutdown: CancellationToken,
}

impl Dispatchers {
    /// No dispatchers yet; they stop claiming when `shutdown` is cancelled.
    pub(crate) fn new(shutdown: CancellationToken) -> Self {
        Self {
            started: Mutex::default(),
            loops: TaskTracker::new(),
            attempts: TaskTracker::new(),
            shutdown,
        }
    }

    /// Ends the loop of `agent_type` when `idle` still holds under the lock that [`ensure`]
    /// takes, so that a registration racing with the end always finds a loop running (it adds
    /// its instance before it calls `ensure`). True when the loop must end.
    ///
    /// [`ensure`]: Dispatchers::ensure
    fn retire(&self, agent_type: &str, idle: impl FnOnce() -> bool) -> bool {
        let Ok(mut started) = self.started.lock() else {
            return false;
        };
        if !idle() {
            return false;
        }
        started.remove(agent_type);
        tracing::debug!(
            agent_type,
            "Dispatcher stopped: the type has no pool and no instance"
        );
        true
    }

    /// Starts the dispatcher of `agent_type` unless it runs already.
    pub(super) fn ensure(&self, state: &Arc<Scheduler>, agent_type: &str) {
        let Ok(mut started) = self.started.lock() else {
            return;
        };
        if self.shutdown.is_cancelled() || !started.insert(agent_type.to_owned()) {
            return;
        }
        tracing::debug!(agent_type, "Dispatcher started");
        self.loops.spawn(run(
            state.clone(),
            agent_type.to_owned(),
            self.shutdown.clone(),
        ));
    }

    /// Waits for the dispatcher loops to stop (after shutdown was cancelled).
    pub(crate) async fn stopped(&self) {
        self.loops.close();
        self.loops.wait().await;
    }
}

async fn run(state: Arc<Scheduler>, agent_type: String, shutdown: CancellationToken) {
    let signal = state.wakers.get(&agent_type);
    // Whatever was queued while no loop ran is looked at at once.
    signal.set_maybe_queued();
    let mut last_look = Instant::now();
    let mut fair = FairShare::default();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let free = state.registry.free_capacity(&agent_type);
        let has_room = !free.is_empty();
        // Claim only when something may be queued — a submission or retry said so, or the poll
        // interval passed (retries whose backoff ended, leases re-queued by another replica).
        // A freed slot with an empty queue then costs no store transaction.
        if has_room && (signal.take_maybe_queued() || last_look.elapsed() >= IDLE_POLL) {
            last_look = Instant::now();
            match claim(&state, &agent_type, free, &mut fair).await {
                Ok(true) => {
                    // There may be more queued: look again as soon as there is room.
                    signal.set_maybe_queued();
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(agent_type, error = %e, "Could not claim tasks");
                    signal.set_maybe_queued();
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            }
        }
        if state.dispatchers.retire(&agent_type, || {
            state.config.pool(&agent_type).is_none() && !state.registry.knows_type(&agent_type)
        }) {
            return;
        }
        // Without a free slot nothing can be claimed until one is freed, which wakes the loop;
        // the poll only catches what no wake-up announces.
        let next_look = if !has_room {
            IDLE_POLL
        } else {
            IDLE_POLL
                .saturating_sub(last_look.elapsed())
                .max(Duration::from_millis(1))
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = signal.notified() => {}
            () = tokio::time::sleep(next_look) => {}
        }
    }
}

/// Claims, for each owner's free slots, queued tasks of the tenants those slots may serve (a
/// tenant's own instances first), and starts their attempts. The platform's slots are shared
/// between the tenants with work queued by `fair` (docs/design.md §4); a tenant's own slots go to
/// it alone and are not charged to its share. True when some claim was full, so that more may be
/// queued.
async fn claim(
    state: &Arc<Scheduler>,
    agent_type: &str,
    free: Vec<FreeSlots>,
    fair: &mut FairShare,
) -> Result<bool, flotilla_store::StoreError> {
    let batch = state.config.scheduler.claim_batch;
    let shares = &state.config.scheduler.fair_share;
    let now = state.clock.now();
    let started = Instant::now();
    let queued = state
        .store
        .queued_tenants(agent_type, now, MAX_TENANTS_PER_ROUND)
        .await;
    state
        .metrics
        .observe_store("queued_tenants", started.elapsed());
    let queued = queued?;
    let mut full = false;
    for group in free {
        let slots = group.slots.min(batch);
        let backlogged: Vec<(TenantId, u32)> = queued
            .iter()
            .filter(|t| group.serves.as_ref().is_none_or(|s| s.contains(t)))
            .map(|&t| (t, shares.weight(t)))
            .collect();
        let plan = match group.owner {
            Some(owner) if backlogged.iter().any(|(t, _)| *t == owner) => vec![(owner, slots)],
            Some(_) => Vec::new(),
            None => fair.plan(slots, &backlogged),
        };
        for (tenant, want) in plan {
            let got = claim_for(state, agent_type, tenant, want).await?;
            if got < want {
                if group.owner.is_none() {
                    fair.refund(tenant, shares.weight(tenant), want - got);
                }
            } else {
                full = true;
            }
        }
    }
    Ok(full)
}

/// Claims up to `want` queued tasks of `tenant` and starts their attempts; how many it claimed.
async fn claim_for(
    state: &Arc<Scheduler>,
    agent_type: &str,
    tenant: TenantId,
    want: u32,
) -> Result<u32, flotilla_store::StoreError> {
    let now = state.clock.now();
    let lease = now
        + chrono::Duration::from_std(state.config.scheduler.lease_ttl)
            .unwrap_or(chrono::Duration::MAX);
    let started = Instant::now();
    let claimed = state
        .store
        .claim_tasks(agent_type, tenant, want, &state.owner, lease, now)
        .await;
    state
        .metrics
        .observe_store("claim_tasks", started.elapsed());
    let tasks = claimed?;
    let got = u32::try_from(tasks.len()).unwrap_or(u32::MAX);
    state
        .metrics
        .claims
        .get_or_create(&Metrics::agent_type(agent_type))
        .inc_by(tasks.len() as u64);
    for task in tasks {
        if let Some(traces) = &state.traces {
            traces.queued(&task, now);
        }
        start_attempt(state, task);
    }
    Ok(got)
}

/// Reserves an instance that may run a claimed task and starts its attempt.
fn start_attempt(state: &Arc<Scheduler>, task: Task) {
    // A retried task avoids the instance it last failed on, when another has room.
    let avoid = task.agent_id.filter(|_| task.attempt > 1);
    let Some(slot) =
        state
            .registry
            .acquire(&task.agent_type, task.tenant_id, avoid, task.complexity)
    else {
        // The slot counted before the claim vanished (an instance failed or left meanwhile).
        let now = state.clock.now();
        state.completions.send(AttemptEnd {
            task_id: task.id,
            attempt: task.attempt,
            agent_id: None,
            started_at: now,
            finished_at: now,
            result: AttemptResult::Retry {
                error: "no instance had room when the task was claimed".to_owned(),
                not_before: now,
            },
        });
        return;
    };
    spawn_attempt(state, task, slot);
}

/// Starts the attempt of a claimed task on a reserved slot.
pub(crate) fn spawn_attempt(state: &Arc<Scheduler>, task: Task, slot: Slot) {
    state
        .dispatchers
        .attempts
        .spawn(attempt(state.clone(), task, slot));
}

/// Gives a reserved slot back; removes the instance from the store when it was waiting to be.
pub(crate) async fn release_slot(state: &Arc<Scheduler>, slot: &Slot) {
    if state.registry.release(slot.agent_id)
        && let Err(e) = state.store.delete_agent(slot.agent_id).await
    {
        tracing::warn!(agent_id = %slot.agent_id, error = %e, "Could not delete the drained instance");
    }
}

async fn attempt(state: Arc<Scheduler>, task: Task, slot: Slot) {
    let started_at = state.clock.now();
    let timeout = Duration::from_millis(u64::try_from(task.timeout_ms).unwrap_or(1).max(1));
    let deadline =
        started_at + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
    // With traces exported, the agent's parent span is `agent.execute`; without, a random span
    // id still lets the agent join the task's trace.
    let trace = state
        .traces
        .as_ref()
        .and_then(|traces| traces.attempt(&task, slot.agent_id, started_at));
    let traceparent = match &trace {
        Some(trace) => Some(trace.traceparent().to_owned()),
        None => task
            .trace_id
            .as_deref()
            .map(|trace| format!("00-{trace}-{:016x}-01", rand::random::<u64>())),
    };
    let request = ExecuteRequest {
        task_id: task.id,
        attempt: task.attempt,
        agent_type: task.agent_type.clone(),
        input: task.input.clone(),
        deadline,
        model_gateway: Some(ModelGateway {
            base_url: state.gateway_url.to_string(),
            token: task_token::issue(
                &state.task_token_key,
                &TaskClaims {
                    task_id: task.id,
                    attempt: task.attempt,
                    tenant_id: task.tenant_id,
                    expires_at: deadline,
                },
            ),
        }),
    };
    // The egress policy towards the instance is its owner's.
    let owner = slot.owner;
    let outcome = tokio::select! {
        outcome = dispatch::execute(
            &state.agents,
            owner,
            dispatch::Target { base_url: &slot.url, signing_secret: &slot.signing_secret },
            &request,
            traceparent.as_deref(),
            started_at,
            timeout,
        ) => outcome,
        // The instance failed (heartbeats stopped, health checks failed): do not wait for the
        // deadline, retry elsewhere now.
        () = slot.failed.cancelled() => Err(DispatchFailure::Connect {
            reason: ConnectReason::InstanceFailed,
            detail: "the instance failed while the attempt ran".to_owned(),
        }),
    };
    let finished_at = state.clock.now();
    // From here on the attempt's model-gateway token is refused.
    state.attempts.ended(task.id, task.attempt);
    record_call(
        &state,
        &task.agent_type,
        (task.tenant_id, task.id),
        &outcome,
        finished_at - started_at,
    );
    // Only failures the instance is to blame for count against it.
    let instance_ok = match &outcome {
        Ok(_) => true,
        Err(failure) => failure.blame() == Blame::Task,
    };
    state.registry.record_outcome(
        slot.agent_id,
        finished_at,
        (finished_at - started_at).to_std().unwrap_or_default(),
        instance_ok,
    );
    release_slot(&state, &slot).await;
    let call = trace.map(|trace| trace.call_ended(&outcome, finished_at));
    // Only the task's tenant's own instance may tell its submitter what it answered.
    let own = owner == Some(task.tenant_id);
    let result = attempt_result(&state, &task, &slot, outcome, own, finished_at);
    if let Some(call) = call {
        call.finish(&result, finished_at);
    }
    state.completions.send(AttemptEnd {
        task_id: task.id,
        attempt: task.attempt,
        agent_id: Some(slot.agent_id),
        started_at,
        finished_at,
        result,
    });
}

/// What becomes of the task after an attempt's outcome.
fn attempt_result(
    state: &Scheduler,
    task: &Task,
    slot: &Slot,
    outcome: Result<ExecuteResponse, DispatchFailure>,
    own: bool,
    finished_at: flotilla_core::Timestamp,
) -> AttemptResult {
    match outcome {
        Ok(answer) => AttemptResult::Succeeded {
            output: answer.output,
            usage: answer
                .usage
                .and_then(|usage| serde_json::to_value(usage).ok()),
        },
        Err(failure) => {
            let policy = BackoffPolicy {
                base: state.config.scheduler.retry_base,
                max: state.config.scheduler.retry_max,
            };
            let result = after_failure(
                &failure,
                own,
                task.attempt,
                task.max_attempts,
                policy,
                finished_at,
                rand::random(),
            );
            tracing::info!(task_id = %task.id, attempt = task.attempt, agent_id = %slot.agent_id, error = %failure.describe(), "Attempt failed");
            if matches!(result, AttemptResult::Retry { .. }) {
                state
                    .metrics
                    .retries
                    .get_or_create(&Metrics::agent_type(&task.agent_type))
                    .inc();
            }
            result
        }
    }
}

/// Counts and times one `/execute` call, and the model tokens its answer reports that the
/// gateway did not meter already (see `telemetry::recent`), bounded by
/// `flotilla_core::reported_usage`. Reported tokens reach `ai_agent_token_usage_total` only:
/// never the per-tenant hourly signal (`recent.record_tokens`), which only the gateway's metered
/// tokens drive, so an agent cannot trip a tenant's `rate_limit` alert action.
fn record_call(
    state: &Scheduler,
    agent_type: &str,
    (_tenant, task): (flotilla_core::id::TenantId, flotilla_core::id::TaskId),
    outcome: &Result<ExecuteResponse, DispatchFailure>,
    took: chrono::Duration,
) {
    let metrics = &state.metrics;
    let seconds = took.to_std().unwrap_or_default().as_secs_f64();
    state.recent.record_response(agent_type, seconds);
    let status = match outcome {
        Ok(_) => "success",
        Err(DispatchFailure::Timeout) => "timeout",
        Err(failure) if failure.blame() == Blame::Task => "rejected",
        Err(_) => "error",
    };
    metrics
        .agent_requests
        .get_or_create(&AgentRequestLabels {
            agent_type: agent_type.to_owned(),
            status: status.to_owned(),
            endpoint: "execute".to_owned(),
        })
        .inc();
    metrics
        .agent_response_time
        .get_or_create(&Metrics::agent_type(agent_type))
        .observe(seconds);
    if let Ok(answer) = outcome {
        let reported = answer.usage.as_deref().unwrap_or_default();
        let known = |model: &str| state.config.gateway.model(model).is_some();
        for (model, (input, output)) in flotilla_core::reported_usage::tally(reported, known) {
            let (input, output) = state.recent.unmetered(task, input, output);
            for (direction, tokens) in [("input", input), ("output", output)] {
                if tokens > 0 {
                    metrics
                        .token_usage
                        .get_or_create(&TokenLabels {
                            agent_type: agent_type.to_owned(),
                            model: model.to_owned(),
                            direction: direction.to_owned(),
                        })
                        .inc_by(tokens);
                }
            }
        }
    }
}
