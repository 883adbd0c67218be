//! The event loop: a binary heap of timed events over one pool, and the bookkeeping that turns
//! the core's decisions into simulated effects.
//!
//! The balancer's candidates are one `Vec<Candidate>` kept in a stable order and updated in place
//! (load, status, latency estimate, success rate) as attempts start and end, so a pick costs the
//! strategy's own scan and nothing more. Counters of free slots, load and capacity are kept
//! incrementally; tests check them against a recount.

use super::fleet::{FleetModel, InstanceProfile};
use super::report::{Latency, Report, ScaleEvent, Series, latency_summary, percentile};
use super::{Config, arrivals::Arrivals};
use chrono::{DateTime, Utc};
use flotilla_core::Timestamp;
use flotilla_core::agent::AgentStatus;
use flotilla_core::autoscale::{AutoscalePolicy, AutoscaleState};
use flotilla_core::balance::{self, BalancerState, Candidate, PickRequest, Strategy, StrategyKind};
use flotilla_core::config::{FleetSection, Pool, SchedulerSection};
use flotilla_core::health::{Ejection, OutlierPolicy};
use flotilla_core::id::AgentId;
use flotilla_core::retry::{self, BackoffPolicy, DispatchFailure};
use flotilla_core::stats::InstanceStats;
use flotilla_core::task::AttemptResult;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

mod membership;

/// Simulated time zero: 2026-01-01T00:00:00Z.
const EPOCH_S: i64 = 1_767_225_600;
/// "No instance".
const NONE: u32 = u32::MAX;
/// Buckets of the time series, about.
const BUCKETS: f64 = 150.0;
/// Salts that derive the independent random streams from the seed.
const ARRIVALS: u64 = 0x61;
const FLEET: u64 = 0x66;
const CONTROL: u64 = 0x63;
const INSTANCE: u64 = 0x1_0000;

/// Runs one simulation with `strategy` (the score weights are the control plane's defaults).
pub fn simulate(config: &Config, strategy: StrategyKind) -> Report {
    let mut sim = Sim::new(config, strategy);
    sim.run();
    sim.report()
}

/// What happens at an instant.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Arrival,
    AttemptEnd {
        instance: u32,
        task: u32,
        started_us: u64,
        ok: bool,
    },
    /// A retried task's backoff ran out.
    Retry {
        task: u32,
        avoid: u32,
    },
    /// A provisioned instance has started.
    Ready {
        instance: u32,
    },
    EjectionEnd {
        instance: u32,
    },
    /// The autoscaler's sampling tick.
    Tick,
}

#[derive(Clone, Copy, Debug)]
struct Event {
    at_us: u64,
    /// Ties break by insertion order, so runs are deterministic.
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    /// Reversed: the heap pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at_us, other.seq).cmp(&(self.at_us, self.seq))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Provisioned, not started yet.
    Pending,
    /// Serving (or draining, or ejected); the index of its candidate.
    Active(usize),
    Gone,
}

#[derive(Debug)]
struct Instance {
    profile: InstanceProfile,
    /// Its own stream of service times and failures, so the k-th attempt on an instance is the
    /// same under every strategy.
    rng: SmallRng,
    stats: InstanceStats,
    ejection: Ejection,
    created_us: u64,
    phase: Phase,
    draining: bool,
    load: u32,
}

impl Instance {
    /// Takes new work (not draining, not ejected).
    fn accepting(&self) -> bool {
        !self.draining && !self.ejection.is_ejected()
    }
}

#[derive(Clone, Copy, Debug)]
struct Task {
    arrived_us: u64,
    attempts: u32,
}

#[derive(Clone, Copy, Debug)]
struct Waiting {
    task: u32,
    avoid: u32,
}

/// Policies from the control plane's defaults.
struct Policies {
    strategy: Strategy,
    autoscale: Option<AutoscalePolicy>,
    outlier: Option<OutlierPolicy>,
    stats_window: Duration,
    backoff: BackoffPolicy,
    sample_every_us: u64,
    startup_us: u64,
}

impl Policies {
    fn new(config: &Config, kind: StrategyKind) -> Self {
        let pool = Pool::implicit("simulated");
        let scheduler = SchedulerSection::default();
        let autoscale = config.autoscale.map(|a| AutoscalePolicy {
            min: a.min,
            max: a.max,
            ..pool.autoscale.unwrap_or_default()
        });
        let interval = config.autoscale.map_or(
            Duration::from_millis(FleetSection::default().autoscale_interval_ms),
            |a| a.interval,
        );
        Self {
            strategy: Strategy {
                kind,
                weights: pool.strategy.weights,
            },
            autoscale,
            outlier: if config.ejection { pool.outlier } else { None },
            stats_window: pool.stats_window,
            backoff: BackoffPolicy {
                base: Duration::from_millis(scheduler.retry_base_ms),
                max: Duration::from_millis(scheduler.retry_max_ms),
            },
            sample_every_us: micros(interval).max(1),
            startup_us: config.autoscale.map_or(0, |a| micros(a.startup)),
        }
    }
}

pub(super) struct Sim<'a> {
    config: &'a Config,
    policies: Policies,
    balancer: BalancerState,
    /// The balancer's view, one per active instance, in a stable order.
    candidates: Vec<Candidate>,
    /// The instance of each candidate.
    active: Vec<u32>,
    instances: Vec<Instance>,
    fleet: FleetModel,
    heap: BinaryHeap<Event>,
    seq: u64,
    now_us: u64,
    arrivals: Arrivals,
    tasks: Vec<Task>,
    queue: VecDeque<Waiting>,
    control: SmallRng,
    scale_state: AutoscaleState,
    // Live counters.
    free_slots: u64,
    total_load: u64,
    serving_capacity: u64,
    held: u32,
    pending: u32,
    draining: u32,
    ejected: u32,
    backing_off: u64,
    // Integrals over time.
    last_us: u64,
    load_us: u128,
    capacity_us: u128,
    instance_us: u128,
    // Results.
    completed: u64,
    failed: u64,
    attempts: u64,
    retries: u64,
    ejections: u64,
    peak_held: u32,
    peak_sampled_utilisation: f64,
    scale_events: Vec<ScaleEvent>,
    bucket_us: u64,
    latencies: Vec<Vec<u64>>,
    held_series: Vec<u32>,
    /// Instances held after the last change recorded in the series.
    held_noted: u32,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn timestamp(us: u64) -> Timestamp {
    DateTime::<Utc>::UNIX_EPOCH
        + chrono::Duration::seconds(EPOCH_S)
        + chrono::Duration::microseconds(i64::try_from(us).unwrap_or(i64::MAX))
}

fn offset_us(t: Timestamp) -> u64 {
    let since = t - timestamp(0);
    since
        .num_microseconds()
        .and_then(|us| u64::try_from(us).ok())
        .unwrap_or(u64::MAX)
}

fn agent_id(instance: u32) -> AgentId {
    AgentId::from_uuid(uuid::Uuid::from_u128(u128::from(instance) + 1))
}

impl<'a> Sim<'a> {
    pub(super) fn new(config: &'a Config, kind: StrategyKind) -> Self {
        let duration_s = config
            .profile
            .expected_duration_s(config.rate, config.tasks);
        let bucket_us = ((duration_s / BUCKETS * 1000.0).ceil() as u64).max(100) * 1000;
        let mut sim = Self {
            config,
            policies: Policies::new(config, kind),
            balancer: BalancerState::default(),
            candidates: Vec::new(),
            active: Vec::new(),
            instances: Vec::new(),
            fleet: FleetModel::new(config, config.seed ^ FLEET),
            heap: BinaryHeap::new(),
            seq: 0,
            now_us: 0,
            arrivals: Arrivals::new(
                config.profile,
                config.rate,
                config.tasks,
                config.seed ^ ARRIVALS,
            ),
            tasks: Vec::with_capacity(usize::try_from(config.tasks).unwrap_or(0)),
            queue: VecDeque::new(),
            control: SmallRng::seed_from_u64(config.seed ^ CONTROL),
            scale_state: AutoscaleState::default(),
            free_slots: 0,
            total_load: 0,
            serving_capacity: 0,
            held: 0,
            pending: 0,
            draining: 0,
            ejected: 0,
            backing_off: 0,
            last_us: 0,
            load_us: 0,
            capacity_us: 0,
            instance_us: 0,
            completed: 0,
            failed: 0,
            attempts: 0,
            retries: 0,
            ejections: 0,
            peak_held: 0,
            peak_sampled_utilisation: 0.0,
            scale_events: Vec::new(),
            bucket_us,
            latencies: Vec::new(),
            held_series: Vec::new(),
            held_noted: 0,
        };
        let initial = config.initial_instances();
        for profile in sim.fleet.initial(initial) {
            let id = sim.provision(profile);
            sim.activate(id);
        }
        sim
    }

    fn schedule(&mut self, at_us: u64, kind: Kind) {
        self.seq += 1;
        self.heap.push(Event {
            at_us,
            seq: self.seq,
            kind,
        });
    }

    pub(super) fn run(&mut self) {
        self.start();
        while self.step() {}
    }

    /// Schedules the first arrival and the first sampling tick.
    pub(super) fn start(&mut self) {
        if let Some(at) = self.arrivals.next_us() {
            self.schedule(at, Kind::Arrival);
        }
        self.schedule(self.policies.sample_every_us, Kind::Tick);
    }

    /// Handles the next event; false when the run is over.
    pub(super) fn step(&mut self) -> bool {
        let Some(event) = self.heap.pop() else {
            return false;
        };
        self.advance(event.at_us);
        match event.kind {
            Kind::Arrival => self.arrive(),
            Kind::AttemptEnd {
                instance,
                task,
                started_us,
                ok,
            } => self.end_attempt(instance, task, started_us, ok),
            Kind::Retry { task, avoid } => {
                self.backing_off -= 1;
                self.queue.push_front(Waiting { task, avoid });
            }
            Kind::Ready { instance } => {
                if self.instances[instance as usize].phase == Phase::Pending {
                    self.activate(instance);
                }
            }
            Kind::EjectionEnd { instance } => self.end_ejection(instance),
            Kind::Tick => self.tick(),
        }
        self.dispatch();
        // The run ends with its last task; pending ticks and ejection timers do not count.
        self.live()
    }

    /// Work remains: arrivals to come, or tasks in flight, queued or backing off.
    fn live(&self) -> bool {
        self.arrivals.left() > 0
            || self.total_load > 0
            || !self.queue.is_empty()
            || self.backing_off > 0
    }

    /// Integrates the counters up to `t_us` and moves the clock there.
    fn advance(&mut self, t_us: u64) {
        let dt = u128::from(t_us.saturating_sub(self.last_us));
        self.load_us += u128::from(self.total_load) * dt;
        self.capacity_us += u128::from(self.serving_capacity) * dt;
        self.instance_us += u128::from(self.held) * dt;
        self.last_us = t_us;
        self.now_us = t_us;
    }

    fn arrive(&mut self) {
        let task = self.tasks.len() as u32;
        self.tasks.push(Task {
            arrived_us: self.now_us,
            attempts: 0,
        });
        self.queue.push_back(Waiting { task, avoid: NONE });
        if let Some(at) = self.arrivals.next_us() {
            self.schedule(at, Kind::Arrival);
        }
    }

    /// Places waiting tasks while some instance has room.
    fn dispatch(&mut self) {
        while self.free_slots > 0 {
            let Some(&waiting) = self.queue.front() else {
                return;
            };
            let request = PickRequest {
                complexity: None,
                avoid: (waiting.avoid != NONE).then(|| agent_id(waiting.avoid)),
                random: self.control.next_u64(),
            };
            let Some(slot) = balance::pick(
                &self.policies.strategy,
                &mut self.balancer,
                &mut self.candidates,
                &request,
            ) else {
                return;
            };
            self.queue.pop_front();
            self.start_attempt(slot, waiting.task);
        }
    }

    fn start_attempt(&mut self, slot: usize, task: u32) {
        let id = self.active[slot];
        let instance = &mut self.instances[id as usize];
        let service_us = instance
            .profile
            .service_us(self.config.sigma, &mut instance.rng);
        let ok = instance.rng.random::<f64>() >= instance.profile.failure_rate;
        instance.load += 1;
        let candidate = &mut self.candidates[slot];
        candidate.load = instance.load;
        candidate.status = AgentStatus::for_load(instance.load);
        self.free_slots -= 1;
        self.total_load += 1;
        self.attempts += 1;
        self.tasks[task as usize].attempts += 1;
        self.schedule(
            self.now_us + service_us,
            Kind::AttemptEnd {
                instance: id,
                task,
                started_us: self.now_us,
                ok,
            },
        );
    }

    fn end_attempt(&mut self, id: u32, task: u32, started_us: u64, ok: bool) {
        let now = timestamp(self.now_us);
        let prior = self.config.median_ms;
        let instance = &mut self.instances[id as usize];
        let Phase::Active(slot) = instance.phase else {
            return;
        };
        instance.load -= 1;
        self.total_load -= 1;
        instance
            .stats
            .observe(now, Duration::from_micros(self.now_us - started_us), ok);
        let candidate = &mut self.candidates[slot];
        candidate.load = instance.load;
        candidate.latency_ms = instance.stats.latency_ms().unwrap_or(prior);
        candidate.success_rate = instance.stats.success_rate().unwrap_or(1.0);
        if instance.accepting() {
            candidate.status = AgentStatus::for_load(instance.load);
            self.free_slots += 1;
            self.consider_ejection(id);
        } else if instance.draining && instance.load == 0 {
            self.remove(id);
        }
        self.finish_attempt(task, id, ok);
    }

    /// The task's side of an attempt's end: done, or the core's retry decision.
    fn finish_attempt(&mut self, task: u32, instance: u32, ok: bool) {
        let record = self.tasks[task as usize];
        if ok {
            self.completed += 1;
            let bucket = (self.now_us / self.bucket_us) as usize;
            if self.latencies.len() <= bucket {
                self.latencies.resize_with(bucket + 1, Vec::new);
            }
            self.latencies[bucket].push(self.now_us - record.arrived_us);
            return;
        }
        // An agent's 5xx: the instance is to blame, so another instance may succeed.
        let failure = DispatchFailure::Status {
            code: 503,
            body: String::new(),
        };
        let jitter: f64 = self.control.random();
        match retry::after_failure(
            &failure,
            true,
            i32::try_from(record.attempts).unwrap_or(i32::MAX),
            i32::try_from(self.config.max_attempts).unwrap_or(i32::MAX),
            self.policies.backoff,
            timestamp(self.now_us),
            jitter,
        ) {
            AttemptResult::Retry { not_before, .. } => {
                self.retries += 1;
                self.backing_off += 1;
                let at = offset_us(not_before).max(self.now_us);
                self.schedule(
                    at,
                    Kind::Retry {
                        task,
                        avoid: instance,
                    },
                );
            }
            AttemptResult::Terminal { .. } | AttemptResult::Succeeded { .. } => self.failed += 1,
        }
    }

    /// Recounts the incremental counters from the instances (for tests).
    #[cfg(test)]
    pub(super) fn check_counters(&self) -> Result<(), String> {
        let capacity = u64::from(self.config.capacity);
        let mut free = 0;
        let mut load = 0;
        for (slot, &id) in self.active.iter().enumerate() {
            let i = &self.instances[id as usize];
            if i.phase != Phase::Active(slot) || self.candidates[slot].load != i.load {
                return Err(format!("instance {id} is out of step with its candidate"));
            }
            if i.accepting() {
                free += capacity - u64::from(i.load);
            }
            load += u64::from(i.load);
        }
        let serving = capacity * self.active.len() as u64;
        if load > serving {
            return Err(format!(
                "load {load} exceeds the serving capacity {serving}"
            ));
        }
        if (free, load, serving) != (self.free_slots, self.total_load, self.serving_capacity) {
            return Err(format!(
                "counted free {free}, load {load}, serving {serving}; kept {}, {}, {}",
                self.free_slots, self.total_load, self.serving_capacity
            ));
        }
        Ok(())
    }

    pub(super) fn report(&mut self) -> Report {
        self.note_held();
        let mut p95_ms = Vec::with_capacity(self.latencies.len());
        let mut all: Vec<u64> = Vec::with_capacity(self.completed as usize);
        for bucket in &mut self.latencies {
            bucket.sort_unstable();
            p95_ms.push((!bucket.is_empty()).then(|| percentile(bucket, 0.95) as f64 / 1000.0));
            all.extend_from_slice(bucket);
        }
        let latency: Latency = latency_summary(&mut all);
        let ratio = |a: u128, b: u128| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Report {
            simulated: true,
            strategy: self.policies.strategy.kind,
            arrived: self.tasks.len() as u64,
            completed: self.completed,
            failed: self.failed + self.queue.len() as u64,
            stranded: self.queue.len() as u64,
            attempts: self.attempts,
            retries: self.retries,
            latency,
            mean_utilisation: ratio(self.load_us, self.capacity_us),
            peak_sampled_utilisation: self.peak_sampled_utilisation,
            scale_events: self.scale_events.clone(),
            ejections: self.ejections,
            peak_instances: self.peak_held,
            instance_hours: self.instance_us as f64 / 3.6e9,
            capacity_cost_usd: self
                .config
                .price_per_hour
                .for_instance_time(self.instance_us),
            simulated_s: self.now_us as f64 / 1e6,
            series: Series {
                bucket_s: self.bucket_us as f64 / 1e6,
                p95_ms,
                instances: self.held_series.clone(),
            },
        }
    }
}
