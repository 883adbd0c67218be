//! Who serves in the simulated pool: instances provisioned, started, ejected as outliers, drained
//! and removed, and the autoscaler's tick that decides the pool's size. The decisions are the
//! core's (`autoscale::decide`, `choose_victims`, `health::outlier_reason`, `may_eject`); this
//! module only keeps the engine's counters in step with them.

use super::{INSTANCE, Instance, Kind, Phase, Sim, agent_id, offset_us, timestamp};
use crate::simulate::fleet::InstanceProfile;
use crate::simulate::report::ScaleEvent;
use flotilla_core::agent::AgentStatus;
use flotilla_core::autoscale::{self, Sample, Victim};
use flotilla_core::balance::Candidate;
use flotilla_core::health::{self, Ejection};
use flotilla_core::stats::InstanceStats;
use rand::SeedableRng;
use rand::rngs::SmallRng;

impl Sim<'_> {
    /// Ejects an instance whose recent attempts fail too often, as the core decides.
    pub(super) fn consider_ejection(&mut self, id: u32) {
        let Some(policy) = self.policies.outlier else {
            return;
        };
        let instance = &self.instances[id as usize];
        if health::outlier_reason(&instance.stats, &policy).is_none() {
            return;
        }
        let pool_size = (self.active.len() as u32 - self.draining) as usize;
        if !health::may_eject(pool_size, self.ejected as usize, &policy) {
            return;
        }
        let instance = &mut self.instances[id as usize];
        let Phase::Active(slot) = instance.phase else {
            return;
        };
        let until = instance.ejection.eject(&policy, timestamp(self.now_us));
        self.free_slots -= u64::from(self.config.capacity - instance.load);
        self.candidates[slot].status = AgentStatus::Ejected;
        self.ejected += 1;
        self.ejections += 1;
        self.schedule(offset_us(until), Kind::EjectionEnd { instance: id });
    }

    pub(super) fn end_ejection(&mut self, id: u32) {
        let instance = &mut self.instances[id as usize];
        if !instance.ejection.expire(timestamp(self.now_us)) {
            return;
        }
        let Phase::Active(slot) = instance.phase else {
            return;
        };
        if instance.draining {
            return;
        }
        instance.stats.reset_outcomes();
        self.candidates[slot].status = AgentStatus::for_load(instance.load);
        self.candidates[slot].success_rate = 1.0;
        self.free_slots += u64::from(self.config.capacity - instance.load);
        self.ejected -= 1;
    }

    /// Samples the pool; with autoscaling, asks the core whether to resize and carries it out.
    pub(super) fn tick(&mut self) {
        let capacity = self.config.capacity;
        let counted = self.active.len() as u32 - self.draining + self.pending;
        let load: u32 = self
            .active
            .iter()
            .map(|&id| &self.instances[id as usize])
            .filter(|i| !i.draining)
            .map(|i| i.load)
            .sum();
        if self.serving_capacity > 0 {
            let utilisation = self.total_load as f64 / self.serving_capacity as f64;
            self.peak_sampled_utilisation = self.peak_sampled_utilisation.max(utilisation);
        }
        if let Some(policy) = self.policies.autoscale {
            let sample = Sample {
                at: timestamp(self.now_us),
                instances: counted,
                capacity_per_instance: capacity,
                load,
                queued: self.queue.len() as u64,
            };
            if let Some(decision) = autoscale::decide(&policy, &mut self.scale_state, sample) {
                self.resize(decision.from, decision.to);
                self.scale_events.push(ScaleEvent {
                    at_s: self.now_us as f64 / 1e6,
                    from: decision.from,
                    to: decision.to,
                    reason: decision.reason,
                });
            }
        }
        if self.live() {
            self.schedule(self.now_us + self.policies.sample_every_us, Kind::Tick);
        }
    }

    fn resize(&mut self, from: u32, to: u32) {
        if to > from {
            for _ in from..to {
                let profile = self.fleet.next();
                let id = self.provision(profile);
                self.schedule(
                    self.now_us + self.policies.startup_us,
                    Kind::Ready { instance: id },
                );
            }
            return;
        }
        let mut surplus = (from - to) as usize;
        // Instances still starting go first: they serve nothing yet.
        for instance in self.instances.iter_mut().rev() {
            if surplus == 0 {
                break;
            }
            if instance.phase == Phase::Pending {
                instance.phase = Phase::Gone;
                self.pending -= 1;
                self.held -= 1;
                surplus -= 1;
            }
        }
        let victims: Vec<Victim<u32>> = self
            .active
            .iter()
            .map(|&id| (id, &self.instances[id as usize]))
            .filter(|(_, i)| !i.draining)
            .map(|(id, i)| Victim {
                id,
                created_at: timestamp(i.created_us),
                load: i.load,
            })
            .collect();
        for id in autoscale::choose_victims(&victims, surplus) {
            self.drain(id);
        }
        self.note_held();
    }

    /// Creates an instance that is starting; it costs from now on.
    pub(super) fn provision(&mut self, profile: InstanceProfile) -> u32 {
        let id = self.instances.len() as u32;
        self.instances.push(Instance {
            profile,
            rng: SmallRng::seed_from_u64(self.config.seed ^ (INSTANCE + u64::from(id))),
            stats: InstanceStats::new(self.policies.stats_window),
            ejection: Ejection::default(),
            created_us: self.now_us,
            phase: Phase::Pending,
            draining: false,
            load: 0,
        });
        self.pending += 1;
        self.held += 1;
        self.note_held();
        id
    }

    /// A started instance joins the balancer's candidates.
    pub(super) fn activate(&mut self, id: u32) {
        let capacity = self.config.capacity;
        let prior = self.config.median_ms;
        let instance = &mut self.instances[id as usize];
        instance.phase = Phase::Active(self.candidates.len());
        let mut candidate = Candidate::new(agent_id(id), AgentStatus::Idle, capacity, 0);
        candidate.weight = instance.profile.weight;
        candidate.latency_ms = prior;
        self.candidates.push(candidate);
        self.active.push(id);
        self.pending -= 1;
        self.free_slots += u64::from(capacity);
        self.serving_capacity += u64::from(capacity);
    }

    /// Scale-down: no new work; removed once its in-flight work is done.
    fn drain(&mut self, id: u32) {
        let capacity = self.config.capacity;
        let instance = &mut self.instances[id as usize];
        let Phase::Active(slot) = instance.phase else {
            return;
        };
        if instance.ejection.is_ejected() {
            self.ejected -= 1;
        } else {
            self.free_slots -= u64::from(capacity - instance.load);
        }
        instance.draining = true;
        self.draining += 1;
        self.candidates[slot].status = AgentStatus::Draining;
        if instance.load == 0 {
            self.remove(id);
        }
    }

    pub(super) fn remove(&mut self, id: u32) {
        let Phase::Active(slot) = self.instances[id as usize].phase else {
            return;
        };
        self.instances[id as usize].phase = Phase::Gone;
        self.candidates.remove(slot);
        self.active.remove(slot);
        for (i, &other) in self.active.iter().enumerate().skip(slot) {
            self.instances[other as usize].phase = Phase::Active(i);
        }
        self.draining -= 1;
        self.held -= 1;
        self.serving_capacity -= u64::from(self.config.capacity);
        self.note_held();
    }

    /// Records the instances held in the time series.
    pub(super) fn note_held(&mut self) {
        let bucket = (self.now_us / self.bucket_us) as usize;
        // Buckets since the last change held what that change left.
        while self.held_series.len() <= bucket {
            self.held_series.push(self.held_noted);
        }
        let cell = &mut self.held_series[bucket];
        *cell = (*cell).max(self.held);
        self.held_noted = self.held;
        self.peak_held = self.peak_held.max(self.held);
    }
}
