//! The autoscaler loop (docs/design.md §5): samples each configured pool's size, load and queue at
//! `[fleet] autoscale_interval_ms`, asks `flotilla_core::autoscale::decide`, records each decision
//! as an event (`pool code_generator 3 → 5: utilisation 0.91 > 0.80 for 30s, queue 42`) and has
//! the pool's provisioner carry it out. For static pools the decision is a recommendation.

use crate::fleet::Fleet;
use crate::fleet::provisioners::Provisioners;
use crate::telemetry::metrics::ScaleLabels;
use flotilla_core::Timestamp;
use flotilla_core::autoscale::{AutoscalePolicy, AutoscaleState, Sample, ScaleDecision, decide};
use flotilla_core::config::{Pool, Provisioner};
use flotilla_core::event::EventKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// What the autoscaler last saw and did for a pool, for `GET /v1/pools`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolScaling {
    /// The size the autoscaler wants (or recommends, for static pools).
    pub desired: u32,
    pub last_decision: Option<(Timestamp, String)>,
    pub utilisation: f64,
    pub queued: u64,
}

/// The autoscaler's view of every pool, shared with the API.
#[derive(Default)]
pub struct Scaling {
    pools: Mutex<HashMap<String, PoolScaling>>,
}

impl Scaling {
    /// A pool's scaling view.
    pub fn get(&self, pool: &str) -> Option<PoolScaling> {
        self.pools.lock().ok()?.get(pool).cloned()
    }

    fn update(&self, pool: &str, f: impl FnOnce(&mut PoolScaling)) {
        if let Ok(mut pools) = self.pools.lock() {
            f(pools.entry(pool.to_owned()).or_default());
        }
    }
}

/// Runs until `shutdown`; the first round happens at once, so local pools start their minimum.
pub(crate) async fn run(
    fleet: Fleet,
    provisioners: Arc<Provisioners>,
    shutdown: CancellationToken,
) {
    let mut states: HashMap<String, AutoscaleState> = HashMap::new();
    let mut tick = tokio::time::interval(fleet.config.fleet.autoscale_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let queued = match fleet.store.queued_by_type(None).await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, "Autoscaler could not read queue depths");
                continue;
            }
        };
        for pool in &fleet.config.pools {
            let sample = sample(
                &fleet,
                &provisioners,
                pool,
                queued.get(&pool.name).copied().unwrap_or(0),
            );
            let policy = pool.autoscale.unwrap_or(AutoscalePolicy {
                // Autoscaling off: only the bounds apply (decide never scales on load).
                scale_up_threshold: f64::INFINITY,
                scale_down_threshold: f64::NEG_INFINITY,
                queue_per_capacity: f64::INFINITY,
                min: pool.min_instances,
                max: pool.max_instances,
                ..AutoscalePolicy::default()
            });
            let scaling = states.entry(pool.name.clone()).or_default();
            let decision = decide(&policy, scaling, sample);
            fleet.scaling.update(&pool.name, |s| {
                s.utilisation = if sample.utilisation().is_finite() {
                    sample.utilisation()
                } else {
                    1.0
                };
                s.queued = sample.queued;
                if decision.is_none() && s.last_decision.is_none() {
                    s.desired = sample.instances;
                }
            });
            if let Some(decision) = decision {
                carry_out(&fleet, &provisioners, pool, &decision, sample.at);
            }
        }
    }
}

fn sample(fleet: &Fleet, provisioners: &Provisioners, pool: &Pool, queued: u64) -> Sample {
    // The platform scales its own instances; tenants' own agents of the type are theirs.
    let counts = fleet.registry.platform_counts(&pool.name);
    let instances = provisioners.size(pool).unwrap_or(counts.accepting);
    let capacity_per_instance = match pool.provisioner {
        // Self-registered instances declare their own capacity: use their average.
        Provisioner::Static if counts.accepting > 0 => counts.capacity / counts.accepting,
        _ => pool.capacity,
    };
    Sample {
        at: fleet.clock.now(),
        instances,
        capacity_per_instance: capacity_per_instance.max(1),
        load: counts.load,
        queued,
    }
}

fn carry_out(
    fleet: &Fleet,
    provisioners: &Provisioners,
    pool: &Pool,
    decision: &ScaleDecision,
    now: Timestamp,
) {
    let ScaleDecision { from, to, reason } = decision;
    let message = match pool.provisioner {
        Provisioner::Static => format!(
            "pool {} {from} → {to} recommended (static pool: instances register themselves): {reason}",
            pool.name
        ),
        _ => format!("pool {} {from} → {to}: {reason}", pool.name),
    };
    fleet.events.emit(
        now,
        EventKind::Scale,
        &pool.name,
        None,
        None,
        message.clone(),
    );
    fleet
        .metrics
        .scale_decisions
        .get_or_create(&ScaleLabels {
            pool: pool.name.clone(),
            direction: if to > from { "up" } else { "down" }.to_owned(),
        })
        .inc();
    fleet.scaling.update(&pool.name, |s| {
        s.desired = *to;
        s.last_decision = Some((now, message));
    });
    provisioners.scale(pool, *to);
}
