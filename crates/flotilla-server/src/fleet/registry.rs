//! The in-memory registry of agent instances: their in-flight load, statistics and health.
//!
//! The store holds the durable record of each instance (so a restarted control plane knows its
//! fleet); this registry holds what changes on every dispatch and is the only place that hands
//! out dispatch slots, so an instance never gets more than its capacity — and only to a task its
//! owner may see ([`flotilla_core::agent::may_serve`]). Instances are grouped by agent type and
//! owner (the platform, or one tenant), each group keeping its balancer's candidates in one
//! vector that strategies scan in place.
//! Every status change is a fleet event with its reason. Locks are held for a few map operations,
//! never across an `.await`.

use crate::fleet::events::EventSink;
use crate::fleet::wakers::Wakers;
use flotilla_core::Timestamp;
use flotilla_core::agent::{AgentInstance, AgentStatus, heartbeat_expired, may_serve};
use flotilla_core::balance::{BalancerState, Candidate, PickRequest, pick};
use flotilla_core::config::{Config, Pool};
use flotilla_core::event::EventKind;
use flotilla_core::health::{CheckState, Ejection, may_eject, outlier_reason};
use flotilla_core::id::{AgentId, TenantId};
use flotilla_core::stats::InstanceStats;
use flotilla_core::wire::Desired;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long an instance this control plane registered may be missing from the store's list in
/// [`Registry::sync`] (the list may predate it).
pub(crate) const SYNC_GRACE: chrono::Duration = chrono::Duration::seconds(5);

/// A reserved place on an instance for one task.
#[derive(Clone)]
pub struct Slot {
    pub agent_id: AgentId,
    /// The instance's owner: `None` for a platform instance.
    pub owner: Option<TenantId>,
    pub url: String,
    /// The instance's secret for signing requests (docs/design.md §6).
    pub signing_secret: String,
    /// Cancelled when the instance fails: its in-flight attempts end and are retried elsewhere.
    pub failed: CancellationToken,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("agent_id", &self.agent_id)
            .field("owner", &self.owner)
            .field("url", &self.url)
            .field("signing_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What `DELETE /v1/agents/{id}` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deregistration {
    /// No task in flight: the instance is gone.
    Removed,
    /// Tasks in flight: the instance drains and is removed when the last one ends.
    Draining,
    /// No such instance.
    Unknown,
}

/// Why an instance is failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Heartbeats stopped; the next heartbeat brings it back.
    Heartbeats,
    /// Active health checks failed; enough good checks bring it back.
    HealthChecks,
}

struct Instance {
    record: AgentInstance,
    stats: InstanceStats,
    ejection: Ejection,
    checks: CheckState,
    failure: Option<(Failure, Timestamp)>,
    /// Asked to drain (by itself, by scale-down, or by deregistration).
    draining: bool,
    /// Removal was asked for; happens when the load reaches 0.
    remove_when_idle: bool,
    failed: CancellationToken,
    next_check: Timestamp,
}

impl Instance {
    fn status(&self, load: u32) -> AgentStatus {
        if self.failure.is_some() {
            AgentStatus::Failed
        } else if self.ejection.is_ejected() {
            AgentStatus::Ejected
        } else if self.draining || self.remove_when_idle {
            AgentStatus::Draining
        } else if self.record.status == AgentStatus::Maintenance {
            AgentStatus::Maintenance
        } else {
            AgentStatus::for_load(load)
        }
    }
}

struct PoolState {
    pool: Arc<Pool>,
    /// The balancer's view, index-aligned with `instances`.
    candidates: Vec<Candidate>,
    instances: Vec<Instance>,
    index: HashMap<AgentId, usize>,
    balancer: BalancerState,
}

impl PoolState {
    fn view(&self, i: usize) -> AgentInstance {
        let c = &self.candidates[i];
        let inst = &self.instances[i];
        let mut record = inst.record.clone();
        record.load = c.load;
        record.status = c.status;
        record.latency_ms = inst.stats.latency_ms();
        record.success_rate = inst.stats.success_rate();
        record
    }

    /// Recomputes the balancer's status of instance `i` after a change.
    fn sync(&mut self, i: usize) -> AgentStatus {
        let status = self.instances[i].status(self.candidates[i].load);
        self.candidates[i].status = status;
        status
    }

    fn remove(&mut self, id: AgentId) -> Option<Instance> {
        let i = self.index.remove(&id)?;
        self.candidates.swap_remove(i);
        let instance = self.instances.swap_remove(i);
        if let Some(moved) = self.instances.get(i) {
            self.index.insert(moved.record.id, i);
        }
        Some(instance)
    }

    fn ejected(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.ejection.is_ejected())
            .count()
    }
}

/// The instances of one agent type that belong to one owner: the platform (`None`) or a tenant.
/// Each group balances on its own, so a tenant's task is only ever picked among instances that
/// may run it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct GroupKey {
    agent_type: String,
    owner: Option<TenantId>,
}

#[derive(Default)]
struct Inner {
    pools: HashMap<GroupKey, PoolState>,
    /// Which group each instance is in.
    by_id: HashMap<AgentId, GroupKey>,
}

impl Inner {
    fn find(&mut self, id: AgentId) -> Option<(&mut PoolState, usize)> {
        let pool = self.pools.get_mut(self.by_id.get(&id)?)?;
        let i = *pool.index.get(&id)?;
        Some((pool, i))
    }

    /// Removes an instance, and its group with its last instance (so that a type nobody serves
    /// any more leaves nothing behind). Returns the instance.
    fn remove(&mut self, id: AgentId) -> Option<Instance> {
        let key = self.by_id.remove(&id)?;
        let pool = self.pools.get_mut(&key)?;
        let instance = pool.remove(id);
        if pool.instances.is_empty() {
            self.pools.remove(&key);
        }
        instance
    }

    /// The groups of one agent type.
    fn of_type<'a>(&'a self, agent_type: &'a str) -> impl Iterator<Item = &'a PoolState> + 'a {
        self.pools
            .iter()
            .filter(move |(key, _)| key.agent_type == agent_type)
            .map(|(_, pool)| pool)
    }
}

/// The free slots of one owner's instances of a type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreeSlots {
    /// `None`: the platform's instances.
    pub owner: Option<TenantId>,
    /// The tenants whose tasks these slots may take (`None`: every tenant).
    pub serves: Option<Vec<TenantId>>,
    pub slots: u32,
}

/// Counts of one pool's instances, for the autoscaler and `GET /v1/pools`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Instances by status.
    pub by_status: Vec<(AgentStatus, u32)>,
    /// Instances that take work (starting, idle, busy).
    pub accepting: u32,
    /// Capacity of the accepting instances.
    pub capacity: u32,
    /// Tasks in flight on all instances of the pool.
    pub load: u32,
}

/// The registry. Cheap to share behind an `Arc`.
pub struct Registry {
    inner: Mutex<Inner>,
    wakers: Arc<Wakers>,
    events: EventSink,
    config: Arc<Config>,
    /// Control planes dispatching to the same instances (docs/design.md §9): each hands out its
    /// share of an instance's capacity, so that together they stay within it.
    replicas: std::sync::atomic::AtomicU32,
}

/// This control plane's share of an instance's slots when `replicas` control planes dispatch to
/// it: the capacity divided among them, rounded up (an instance of capacity 1 is shared by
/// taking turns at its own refusal, `429 at_capacity`, which is retried).
pub(crate) fn capacity_share(capacity: u32, replicas: u32) -> u32 {
    capacity.div_ceil(replicas.max(1)).max(1)
}

impl Registry {
    /// An empty registry that wakes dispatchers through `wakers` and reports through `events`.
    pub fn new(wakers: Arc<Wakers>, events: EventSink, config: Arc<Config>) -> Self {
        Self {
            inner: Mutex::default(),
            wakers,
            events,
            config,
            replicas: std::sync::atomic::AtomicU32::new(1),
        }
    }

    /// Sets how many control planes dispatch to the instances; each instance's slots here
    /// become [`capacity_share`] of its capacity.
    pub fn set_replicas(&self, replicas: u32) {
        let replicas = replicas.max(1);
        let before = self
            .replicas
            .swap(replicas, std::sync::atomic::Ordering::AcqRel);
        if before == replicas {
            return;
        }
        let mut types = Vec::new();
        {
            let mut inner = self.lock();
            for pool in inner.pools.values_mut() {
                for i in 0..pool.instances.len() {
                    pool.candidates[i].capacity =
                        capacity_share(pool.instances[i].record.capacity, replicas);
                    pool.sync(i);
                }
                types.push(pool.pool.name.clone());
            }
        }
        for agent_type in types {
            self.wakers.wake(&agent_type);
        }
    }

    fn share(&self, capacity: u32) -> u32 {
        capacity_share(
            capacity,
            self.replicas.load(std::sync::atomic::Ordering::Acquire),
        )
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic while holding it; every mutation is a few field writes
        // that leave the maps consistent, so keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pool configuration of a type: its `[[pools]]` entry or the implicit defaults.
    pub fn pool_config(&self, agent_type: &str) -> Arc<Pool> {
        if let Some(pool) = self.lock().of_type(agent_type).next() {
            return pool.pool.clone();
        }
        Arc::new(
            self.config
                .pools
                .iter()
                .find(|p| p.name == agent_type)
                .cloned()
                .unwrap_or_else(|| Pool::implicit(agent_type)),
        )
    }

    /// An instance's event: its owner's to read (a platform instance's, everyone's).
    fn emit(
        &self,
        at: Timestamp,
        (agent_type, owner): (&str, Option<TenantId>),
        id: AgentId,
        message: String,
    ) {
        self.events.emit(
            at,
            EventKind::Instance,
            agent_type,
            Some(id),
            owner,
            message,
        );
    }

    /// Adds (or replaces) an instance.
    pub fn insert(&self, record: AgentInstance, now: Timestamp) {
        self.add(record, now, true);
    }

    /// Adds (or replaces) an instance, announcing it as an event when `announce`.
    fn add(&self, record: AgentInstance, now: Timestamp, announce: bool) {
        let agent_type = record.agent_type.clone();
        let key = GroupKey {
            agent_type: agent_type.clone(),
            owner: record.tenant_id,
        };
        let pool = self.pool_config(&agent_type);
        let (id, capacity, tenant) = (record.id, record.capacity, record.tenant_id);
        let owner = match record.tenant_id {
            Some(tenant) => format!("tenant {tenant}"),
            None => "the platform".to_owned(),
        };
        let mut candidate =
            Candidate::new(record.id, AgentStatus::Idle, self.share(record.capacity), 0);
        candidate.weight = record.weight;
        candidate.compatibility = record
            .metadata
            .get("variant")
            .and_then(|v| v.as_str())
            .and_then(|v| pool.compatibility.get(v).copied())
            .unwrap_or(1.0);
        candidate.capability = record
            .metadata
            .get("capability")
            .and_then(serde_json::Value::as_f64)
            .map_or(0.5, |c| c.clamp(0.0, 1.0));
        let draining = record.status == AgentStatus::Draining;
        let instance = Instance {
            stats: InstanceStats::new(pool.stats_window),
            ejection: Ejection::default(),
            checks: CheckState::default(),
            failure: (record.status == AgentStatus::Failed).then_some((Failure::Heartbeats, now)),
            draining,
            remove_when_idle: false,
            failed: CancellationToken::new(),
            next_check: now + chrono::Duration::milliseconds(500),
            record,
        };
        {
            let mut inner = self.lock();
            if let Some(old) = inner.by_id.insert(id, key.clone())
                && let Some(p) = inner.pools.get_mut(&old)
            {
                p.remove(id);
            }
            let state = inner.pools.entry(key).or_insert_with(|| PoolState {
                pool,
                candidates: Vec::new(),
                instances: Vec::new(),
                index: HashMap::new(),
                balancer: BalancerState::default(),
            });
            let i = state.instances.len();
            state.index.insert(id, i);
            state.candidates.push(candidate);
            state.instances.push(instance);
            state.sync(i);
        }
        if announce {
            self.emit(
                now,
                (&agent_type, tenant),
                id,
                // No URL: fleet events are read by every tenant, platform addresses are for
                // admins (GET /v1/agents).
                format!("instance {id} of {owner} registered with capacity {capacity}"),
            );
        }
        self.wakers.wake(&agent_type);
    }

    /// Brings this control plane's view in line with the store, which other control planes on
    /// the same database also write (docs/design.md §9): instances registered elsewhere join,
    /// instances removed elsewhere leave, heartbeats and drains received elsewhere count.
    /// Quietly: the control plane that made a change announced it. Instances younger than
    /// [`SYNC_GRACE`] are kept even when missing from `stored`, which may have been read before
    /// they were written. Returns the types of the instances that joined.
    pub fn sync(&self, stored: Vec<AgentInstance>, now: Timestamp) -> Vec<String> {
        let stored: HashMap<AgentId, AgentInstance> =
            stored.into_iter().map(|a| (a.id, a)).collect();
        let mut joined = Vec::new();
        let mut beats = Vec::new();
        {
            let mut inner = self.lock();
            let mut gone = Vec::new();
            for pool in inner.pools.values() {
                for inst in &pool.instances {
                    let record = &inst.record;
                    match stored.get(&record.id) {
                        None if now - record.created_at > SYNC_GRACE => gone.push(record.id),
                        None => {}
                        Some(s) if s.last_heartbeat > record.last_heartbeat => beats.push((
                            record.id,
                            s.status == AgentStatus::Draining,
                            s.last_heartbeat,
                        )),
                        Some(_) => {}
                    }
                }
            }
            for id in gone {
                if let Some(instance) = inner.remove(id) {
                    instance.failed.cancel();
                }
            }
            for (id, record) in &stored {
                if !inner.by_id.contains_key(id) && record.status != AgentStatus::Failed {
                    joined.push(record.clone());
                }
            }
        }
        for (id, draining, at) in beats {
            self.heartbeat(id, draining, at);
        }
        let mut types = Vec::new();
        for record in joined {
            types.push(record.agent_type.clone());
            self.add(record, now, false);
        }
        types
    }

    /// Looks an instance up in the store's copy when this control plane does not know it (it
    /// registered with another one); true when it is known now.
    pub fn adopt(&self, record: Option<AgentInstance>, now: Timestamp) -> bool {
        match record {
            Some(record) if self.get(record.id).is_none() => {
                self.add(record, now, false);
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Loads the durable fleet at start-up. Each instance gets a full heartbeat timeout from
    /// `now` to check in, since its heartbeats could not arrive while the control plane was down.
    pub fn load(&self, records: Vec<AgentInstance>, now: Timestamp) {
        for mut record in records {
            record.last_heartbeat = record.last_heartbeat.max(now);
            record.load = 0;
            if record.status == AgentStatus::Failed {
                record.status = AgentStatus::Idle;
            }
            self.insert(record, now);
        }
    }

    /// Records a heartbeat. `None` when the instance is unknown. An instance failed for missed
    /// heartbeats is back in rotation; one that says `draining` gets no new work.
    pub fn heartbeat(
        &self,
        id: AgentId,
        draining: bool,
        now: Timestamp,
    ) -> Option<(Desired, AgentStatus)> {
        let mut inner = self.lock();
        let (pool, i) = inner.find(id)?;
        let inst = &mut pool.instances[i];
        inst.record.last_heartbeat = now;
        let mut recovered = false;
        if draining {
            inst.draining = true;
        }
        if matches!(inst.failure, Some((Failure::Heartbeats, _))) {
            inst.failure = None;
            inst.failed = CancellationToken::new();
            recovered = true;
        }
        let desired = if inst.draining || inst.remove_when_idle {
            Desired::Drain
        } else {
            Desired::Run
        };
        let status = pool.sync(i);
        let agent_type = pool.pool.name.clone();
        let owner = pool.instances[i].record.tenant_id;
        drop(inner);
        if recovered {
            self.emit(
                now,
                (&agent_type, owner),
                id,
                format!("instance {id} failed → {status}: heartbeats resumed"),
            );
            self.wakers.wake(&agent_type);
        }
        Some((desired, status))
    }

    /// Free task slots among instances of a type that accept work, per owner (tenants' own
    /// groups first, then the platform's), leaving out owners without a free slot. With the
    /// platform's group comes the tenants its pool serves (`None`: every tenant).
    pub fn free_capacity(&self, agent_type: &str) -> Vec<FreeSlots> {
        let inner = self.lock();
        let mut free: Vec<FreeSlots> = inner
            .pools
            .iter()
            .filter(|(key, _)| key.agent_type == agent_type)
            .filter_map(|(key, p)| {
                let slots: u32 = p
                    .candidates
                    .iter()
                    .filter(|c| c.status.accepts_work())
                    .map(|c| c.capacity.saturating_sub(c.load))
                    .sum();
                (slots > 0).then(|| FreeSlots {
                    owner: key.owner,
                    serves: match key.owner {
                        Some(tenant) => Some(vec![tenant]),
                        None => p.pool.tenants.clone(),
                    },
                    slots,
                })
            })
            .collect();
        free.sort_by_key(|f| f.owner.is_none());
        free
    }

    /// Reserves a slot for a task of `tenant` on an instance that may run it: among the
    /// tenant's own instances first, then among the platform's when its pool serves the tenant
    /// ([`may_serve`]); within each, the instance the pool's strategy picks, avoiding `avoid` if
    /// another has room.
    pub fn acquire(
        &self,
        agent_type: &str,
        tenant: TenantId,
        avoid: Option<AgentId>,
        complexity: Option<f64>,
    ) -> Option<Slot> {
        let mut inner = self.lock();
        for owner in [Some(tenant), None] {
            let key = GroupKey {
                agent_type: agent_type.to_owned(),
                owner,
            };
            let Some(pool) = inner.pools.get_mut(&key) else {
                continue;
            };
            if !may_serve(owner, pool.pool.tenants.as_deref(), tenant) {
                continue;
            }
            if let Some(slot) = Self::pick_in(pool, owner, avoid, complexity) {
                return Some(slot);
            }
        }
        None
    }

    fn pick_in(
        pool: &mut PoolState,
        owner: Option<TenantId>,
        avoid: Option<AgentId>,
        complexity: Option<f64>,
    ) -> Option<Slot> {
        let request = PickRequest {
            complexity,
            avoid,
            random: rand::random(),
        };
        let strategy = pool.pool.strategy;
        let i = pick(
            &strategy,
            &mut pool.balancer,
            &mut pool.candidates,
            &request,
        )?;
        pool.candidates[i].load += 1;
        pool.sync(i);
        let inst = &pool.instances[i];
        Some(Slot {
            agent_id: inst.record.id,
            owner,
            url: inst.record.url.clone(),
            signing_secret: inst.record.signing_secret.clone(),
            failed: inst.failed.clone(),
        })
    }

    /// Records how an attempt on an instance went (`succeeded` false only when the instance is
    /// to blame), and ejects it when it has become an outlier.
    pub fn record_outcome(&self, id: AgentId, now: Timestamp, latency: Duration, succeeded: bool) {
        let mut inner = self.lock();
        let Some((pool, i)) = inner.find(id) else {
            return;
        };
        let inst = &mut pool.instances[i];
        inst.stats.observe(now, latency, succeeded);
        let candidate = &mut pool.candidates[i];
        candidate.latency_ms = inst.stats.latency_ms().unwrap_or(0.0);
        candidate.success_rate = inst.stats.success_rate().unwrap_or(1.0);
        let Some(policy) = pool.pool.outlier else {
            return;
        };
        if succeeded || inst.ejection.is_ejected() || inst.failure.is_some() {
            return;
        }
        let Some(reason) = outlier_reason(&inst.stats, &policy) else {
            return;
        };
        if !may_eject(pool.instances.len(), pool.ejected(), &policy) {
            tracing::debug!(agent_id = %id, %reason, "Outlier not ejected: the pool's ejection cap is reached");
            return;
        }
        let inst = &mut pool.instances[i];
        let before = pool.candidates[i].status;
        let until = inst.ejection.eject(&policy, now);
        let offences = inst.ejection.offences;
        let owner = inst.record.tenant_id;
        pool.sync(i);
        let agent_type = pool.pool.name.clone();
        drop(inner);
        self.emit(
            now,
            (&agent_type, owner),
            id,
            format!(
                "instance {id} {before} → ejected: {reason} (offence {offences}, until {})",
                until.format("%H:%M:%S")
            ),
        );
    }

    /// Returns a slot. True when the instance was waiting to be removed and now is.
    pub fn release(&self, id: AgentId) -> bool {
        let mut inner = self.lock();
        let Some((pool, i)) = inner.find(id) else {
            return false;
        };
        let c = &mut pool.candidates[i];
        c.load = c.load.saturating_sub(1);
        let removed = pool.instances[i].remove_when_idle && pool.candidates[i].load == 0;
        pool.sync(i);
        let agent_type = pool.pool.name.clone();
        if removed {
            inner.remove(id);
        }
        drop(inner);
        self.wakers.wake(&agent_type);
        removed
    }

    /// Takes an instance out of rotation and removes it once its in-flight tasks end.
    pub fn deregister(&self, id: AgentId, now: Timestamp) -> Deregistration {
        let mut inner = self.lock();
        let Some((pool, i)) = inner.find(id) else {
            return Deregistration::Unknown;
        };
        let agent_type = pool.pool.name.clone();
        let owner = pool.instances[i].record.tenant_id;
        let outcome = if pool.candidates[i].load == 0 {
            inner.remove(id);
            Deregistration::Removed
        } else {
            pool.instances[i].remove_when_idle = true;
            pool.sync(i);
            Deregistration::Draining
        };
        drop(inner);
        let message = match outcome {
            Deregistration::Removed => format!("instance {id} removed: deregistered"),
            _ => format!("instance {id} → draining: deregistered with tasks in flight"),
        };
        self.emit(now, (&agent_type, owner), id, message);
        outcome
    }

    /// Stops giving an instance work (scale-down); it is told to drain at its next heartbeat.
    /// Returns its load, or `None` when unknown.
    pub fn drain(&self, id: AgentId, now: Timestamp, reason: &str) -> Option<u32> {
        let mut inner = self.lock();
        let (pool, i) = inner.find(id)?;
        let load = pool.candidates[i].load;
        if pool.instances[i].draining {
            return Some(load);
        }
        let before = pool.candidates[i].status;
        pool.instances[i].draining = true;
        pool.sync(i);
        let agent_type = pool.pool.name.clone();
        let owner = pool.instances[i].record.tenant_id;
        drop(inner);
        self.emit(
            now,
            (&agent_type, owner),
            id,
            format!("instance {id} {before} → draining: {reason}"),
        );
        Some(load)
    }

    /// Removes an instance whatever its state (its process is gone). True when it was known.
    pub fn forget(&self, id: AgentId, now: Timestamp, reason: &str) -> bool {
        let mut inner = self.lock();
        let Some(agent_type) = inner.by_id.get(&id).map(|key| key.agent_type.clone()) else {
            return false;
        };
        let removed = inner.remove(id);
        drop(inner);
        if let Some(instance) = removed {
            instance.failed.cancel();
            self.emit(
                now,
                (&agent_type, instance.record.tenant_id),
                id,
                format!("instance {id} removed: {reason}"),
            );
        }
        true
    }

    /// Fails every instance whose heartbeat is older than `timeout`: it gets no new work and its
    /// in-flight attempts are cut short and retried elsewhere. Returns them.
    pub fn expire_heartbeats(&self, now: Timestamp, timeout: chrono::Duration) -> Vec<AgentId> {
        let mut expired = Vec::new();
        let mut inner = self.lock();
        for pool in inner.pools.values_mut() {
            for i in 0..pool.instances.len() {
                let inst = &mut pool.instances[i];
                if inst.failure.is_none()
                    && heartbeat_expired(inst.record.last_heartbeat, now, timeout)
                {
                    let before = pool.candidates[i].status;
                    inst.failure = Some((Failure::Heartbeats, now));
                    inst.failed.cancel();
                    let last = inst.record.last_heartbeat;
                    let group = (pool.pool.name.clone(), inst.record.tenant_id);
                    expired.push((group, inst.record.id, before, last));
                    pool.sync(i);
                }
            }
        }
        drop(inner);
        expired
            .into_iter()
            .map(|((agent_type, owner), id, before, last)| {
                self.emit(
                    now,
                    (&agent_type, owner),
                    id,
                    format!(
                        "instance {id} {before} → failed: no heartbeat since {}",
                        last.format("%H:%M:%S%.3f")
                    ),
                );
                id
            })
            .collect()
    }

    /// Removes instances failed for longer than `after`; returns them.
    pub fn remove_failed(&self, now: Timestamp, after: chrono::Duration) -> Vec<AgentId> {
        let mut inner = self.lock();
        let mut gone = Vec::new();
        for pool in inner.pools.values() {
            gone.extend(
                pool.instances
                    .iter()
                    .filter(|i| i.failure.is_some_and(|(_, since)| now - since > after))
                    .map(|i| ((pool.pool.name.clone(), i.record.tenant_id), i.record.id)),
            );
        }
        for (_, id) in &gone {
            inner.remove(*id);
        }
        drop(inner);
        gone.into_iter()
            .map(|((agent_type, owner), id)| {
                self.emit(
                    now,
                    (&agent_type, owner),
                    id,
                    format!(
                        "instance {id} removed: failed for more than {}s",
                        after.num_seconds()
                    ),
                );
                id
            })
            .collect()
    }

    /// Returns instances whose ejection has run its time to rotation.
    pub fn restore_ejected(&self, now: Timestamp) {
        let mut restored = Vec::new();
        let mut inner = self.lock();
        for pool in inner.pools.values_mut() {
            for i in 0..pool.instances.len() {
                let inst = &mut pool.instances[i];
                if inst.ejection.expire(now) {
                    inst.stats.reset_outcomes();
                    let c = &mut pool.candidates[i];
                    c.success_rate = 1.0;
                    let status = pool.sync(i);
                    let record = &pool.instances[i].record;
                    let group = (pool.pool.name.clone(), record.tenant_id);
                    restored.push((group, record.id, status));
                }
            }
        }
        drop(inner);
        for ((agent_type, owner), id, status) in restored {
            self.emit(
                now,
                (&agent_type, owner),
                id,
                format!("instance {id} ejected → {status}: ejection time over"),
            );
            self.wakers.wake(&agent_type);
        }
    }

    /// Instances due for an active health check at `now`: (id, owner, url, timeout). Each is
    /// scheduled for its next check.
    pub fn due_checks(&self, now: Timestamp) -> Vec<(AgentId, Option<TenantId>, String, Duration)> {
        let mut due = Vec::new();
        let mut inner = self.lock();
        for pool in inner.pools.values_mut() {
            let Some(interval) = pool.pool.health.interval else {
                continue;
            };
            let timeout = pool.pool.health.timeout;
            for inst in &mut pool.instances {
                if inst.next_check <= now {
                    inst.next_check =
                        now + chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
                    due.push((
                        inst.record.id,
                        inst.record.tenant_id,
                        inst.record.url.clone(),
                        timeout,
                    ));
                }
            }
        }
        due
    }

    /// Records an active check's result; fails or restores the instance when the pool's
    /// thresholds say so.
    pub fn record_check(&self, id: AgentId, ok: bool, detail: &str, now: Timestamp) {
        let mut inner = self.lock();
        let Some((pool, i)) = inner.find(id) else {
            return;
        };
        let thresholds = pool.pool.health.thresholds;
        let inst = &mut pool.instances[i];
        let owner = inst.record.tenant_id;
        let Some(healthy) = inst.checks.observe(ok, thresholds) else {
            return;
        };
        let before = pool.candidates[i].status;
        let message = if healthy {
            if !matches!(inst.failure, Some((Failure::HealthChecks, _))) {
                return;
            }
            inst.failure = None;
            inst.failed = CancellationToken::new();
            let status = pool.sync(i);
            format!(
                "instance {id} {before} → {status}: {} health checks passed",
                thresholds.healthy
            )
        } else {
            if inst.failure.is_some() {
                return;
            }
            inst.failure = Some((Failure::HealthChecks, now));
            inst.failed.cancel();
            pool.sync(i);
            format!(
                "instance {id} {before} → failed: {} health checks failed, last: {detail}",
                thresholds.unhealthy
            )
        };
        let agent_type = pool.pool.name.clone();
        drop(inner);
        self.emit(now, (&agent_type, owner), id, message);
        if healthy {
            self.wakers.wake(&agent_type);
        }
    }

    /// Counts of one pool: every instance of the type, whoever owns it.
    pub fn counts(&self, agent_type: &str) -> PoolCounts {
        self.counts_where(agent_type, |_| true)
    }

    /// Counts of the platform's instances of a type (what a provisioner runs and scales).
    pub fn platform_counts(&self, agent_type: &str) -> PoolCounts {
        self.counts_where(agent_type, |owner| owner.is_none())
    }

    fn counts_where(
        &self,
        agent_type: &str,
        owned: impl Fn(Option<TenantId>) -> bool,
    ) -> PoolCounts {
        let inner = self.lock();
        let mut by_status: Vec<(AgentStatus, u32)> = Vec::new();
        let mut counts = PoolCounts::default();
        let candidates = inner
            .pools
            .iter()
            .filter(|(key, _)| key.agent_type == agent_type && owned(key.owner))
            .flat_map(|(_, pool)| &pool.candidates);
        for c in candidates {
            match by_status.iter_mut().find(|(s, _)| *s == c.status) {
                Some((_, n)) => *n += 1,
                None => by_status.push((c.status, 1)),
            }
            counts.load += c.load;
            if c.status.accepts_work() {
                counts.accepting += 1;
                counts.capacity += c.capacity;
            }
        }
        by_status.sort_by_key(|(s, _)| AgentStatus::ALL.iter().position(|x| x == s));
        counts.by_status = by_status;
        counts
    }

    /// Share of successful attempts over the statistics windows of a pool's instances (each
    /// instance's own window, pooled); `None` without attempts.
    pub fn success_rate(&self, agent_type: &str) -> Option<f64> {
        let inner = self.lock();
        let instances = inner.of_type(agent_type).flat_map(|p| &p.instances);
        let (requests, failures) = instances.fold((0u64, 0u64), |(r, f), i| {
            (
                r + u64::from(i.stats.requests()),
                f + u64::from(i.stats.failures()),
            )
        });
        (requests > 0).then(|| (requests - failures) as f64 / requests as f64)
    }

    /// Every instance as the API shows it, oldest first.
    pub fn list(&self) -> Vec<AgentInstance> {
        let inner = self.lock();
        let mut all: Vec<_> = inner
            .pools
            .values()
            .flat_map(|p| (0..p.instances.len()).map(|i| p.view(i)))
            .collect();
        all.sort_by_key(|a| (a.created_at, a.id));
        all
    }

    /// The instances of one pool (of every owner), oldest first.
    pub fn list_pool(&self, agent_type: &str) -> Vec<AgentInstance> {
        let inner = self.lock();
        let mut all: Vec<_> = inner
            .of_type(agent_type)
            .flat_map(|p| (0..p.instances.len()).map(|i| p.view(i)))
            .collect();
        all.sort_by_key(|a| (a.created_at, a.id));
        all
    }

    /// One instance as the API shows it.
    pub fn get(&self, id: AgentId) -> Option<AgentInstance> {
        let mut inner = self.lock();
        let (pool, i) = inner.find(id)?;
        Some(pool.view(i))
    }

    /// True when some instance (in any state) serves this type.
    pub fn knows_type(&self, agent_type: &str) -> bool {
        self.lock()
            .of_type(agent_type)
            .any(|p| !p.instances.is_empty())
    }

    /// True when some instance (in any state) of this type may run tasks of `tenant`.
    pub fn serves(&self, agent_type: &str, tenant: TenantId) -> bool {
        self.lock().pools.iter().any(|(key, p)| {
            key.agent_type == agent_type
                && !p.instances.is_empty()
                && may_serve(key.owner, p.pool.tenants.as_deref(), tenant)
        })
    }

    /// A tenant's own instances and the distinct types among them (for its limits).
    pub fn owned_by(&self, tenant: TenantId) -> (u32, Vec<String>) {
        let inner = self.lock();
        let mut instances = 0u32;
        let mut types = Vec::new();
        for (key, p) in &inner.pools {
            if key.owner == Some(tenant) && !p.instances.is_empty() {
                instances = instances.saturating_add(p.instances.len() as u32);
                types.push(key.agent_type.clone());
            }
        }
        (instances, types)
    }

    /// The agent types of all instances.
    pub fn types(&self) -> Vec<String> {
        let mut types: Vec<String> = self
            .lock()
            .pools
            .iter()
            .filter(|(_, p)| !p.instances.is_empty())
            .map(|(key, _)| key.agent_type.clone())
            .collect();
        types.sort();
        types.dedup();
        types
    }
}

#[cfg(test)]
mod tests;
