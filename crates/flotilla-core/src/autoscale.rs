//! Autoscaling decisions (docs/design.md §5): from a pool's samples of utilisation and queue depth,
//! whether to change its size, to what, and why.
//!
//! Scale up when every sample of the last `scale_up_delay` is over the scale-up threshold (or the
//! queue holds more than `queue_per_capacity` tasks per free-or-busy slot); scale down when every
//! sample of the last `scale_down_delay` is under the scale-down threshold with an empty queue.
//! Both size the pool so that the demand seen (load + queue) would run at the target utilisation.
//! That is what prevents thrash: after a scale-up the same demand runs at about the target, far
//! above the scale-down threshold; after a scale-down the largest recent demand runs at most at
//! the target, below the scale-up threshold. A cooldown after each change lets it take effect.

use crate::Timestamp;
use std::collections::VecDeque;
use std::time::Duration;

/// A pool's autoscaling settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AutoscalePolicy {
    pub min: u32,
    pub max: u32,
    /// Utilisation a resized pool is sized for, 0 to 1.
    pub target_utilisation: f64,
    pub scale_up_threshold: f64,
    pub scale_down_threshold: f64,
    /// Queued tasks per slot of capacity above which the pool scales up whatever the utilisation.
    pub queue_per_capacity: f64,
    /// How much history is kept.
    pub window: Duration,
    /// How long the pool must be over the threshold before scaling up.
    pub scale_up_delay: Duration,
    /// How long the pool must be under the threshold before scaling down.
    pub scale_down_delay: Duration,
    /// No change this soon after the previous one.
    pub cooldown: Duration,
}

impl Default for AutoscalePolicy {
    fn default() -> Self {
        Self {
            min: 1,
            max: 10,
            target_utilisation: 0.6,
            scale_up_threshold: 0.8,
            scale_down_threshold: 0.2,
            queue_per_capacity: 1.0,
            window: Duration::from_secs(600),
            scale_up_delay: Duration::from_secs(30),
            scale_down_delay: Duration::from_secs(300),
            cooldown: Duration::from_secs(60),
        }
    }
}

/// One observation of a pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub at: Timestamp,
    /// Instances counted towards the pool's size (running or starting, not draining).
    pub instances: u32,
    /// Capacity of one instance.
    pub capacity_per_instance: u32,
    /// Tasks in flight.
    pub load: u32,
    /// Tasks waiting.
    pub queued: u64,
}

impl Sample {
    /// Load over capacity; a pool with no instance is fully utilised when it has work.
    pub fn utilisation(&self) -> f64 {
        let capacity = f64::from(self.instances) * f64::from(self.capacity_per_instance);
        if capacity > 0.0 {
            f64::from(self.load) / capacity
        } else if self.load > 0 || self.queued > 0 {
            f64::INFINITY
        } else {
            0.0
        }
    }

    /// Queued tasks per slot of capacity.
    pub fn queue_ratio(&self) -> f64 {
        let capacity = f64::from(self.instances) * f64::from(self.capacity_per_instance);
        if capacity > 0.0 {
            self.queued as f64 / capacity
        } else if self.queued > 0 {
            f64::INFINITY
        } else {
            0.0
        }
    }

    /// Tasks that want a slot: in flight plus waiting.
    fn demand(&self) -> f64 {
        f64::from(self.load) + self.queued as f64
    }
}

/// A change of size and its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleDecision {
    pub from: u32,
    pub to: u32,
    /// E.g. `utilisation 0.91 > 0.80 for 30s, queue 42`.
    pub reason: String,
}

/// The history the autoscaler keeps for one pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AutoscaleState {
    samples: VecDeque<Sample>,
    last_change: Option<Timestamp>,
}

impl AutoscaleState {
    /// When the size last changed.
    pub fn last_change(&self) -> Option<Timestamp> {
        self.last_change
    }
}

fn duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Records `sample` and decides. `None`: keep the size. The caller carries the decision out.
pub fn decide(
    policy: &AutoscalePolicy,
    state: &mut AutoscaleState,
    sample: Sample,
) -> Option<ScaleDecision> {
    let now = sample.at;
    state.samples.push_back(sample);
    let keep = duration(policy.window.max(policy.scale_down_delay));
    while state.samples.front().is_some_and(|s| now - s.at > keep) {
        state.samples.pop_front();
    }
    let current = sample.instances;
    let (min, max) = (policy.min, policy.max.max(policy.min));
    let decision = |to: u32, reason: String| {
        Some(ScaleDecision {
            from: current,
            to,
            reason,
        })
    };
    // Bounds apply at once, cooldown or not.
    if current < min {
        state.last_change = Some(now);
        return decision(min, format!("below the minimum of {min}"));
    }
    if current > max {
        state.last_change = Some(now);
        return decision(max, format!("above the maximum of {max}"));
    }
    if state
        .last_change
        .is_some_and(|t| now - t < duration(policy.cooldown))
    {
        return None;
    }
    let cap = f64::from(sample.capacity_per_instance.max(1));
    let target = policy.target_utilisation.clamp(0.05, 1.0);
    let sized_for = |demand: f64| (demand / (cap * target)).ceil() as u32;

    let up = over_period(state, now, policy.scale_up_delay, |s| {
        s.utilisation() > policy.scale_up_threshold || s.queue_ratio() > policy.queue_per_capacity
    });
    if let Some(period) = up
        && current < max
    {
        let demand = period.iter().map(Sample::demand).fold(0.0, f64::max);
        let to = sized_for(demand).clamp(current + 1, max);
        let util = period
            .iter()
            .map(Sample::utilisation)
            .fold(f64::INFINITY, f64::min);
        state.last_change = Some(now);
        return decision(
            to,
            format!(
                "utilisation {} > {:.2} for {}s, queue {}",
                show_ratio(util),
                policy.scale_up_threshold,
                policy.scale_up_delay.as_secs(),
                sample.queued
            ),
        );
    }
    let down = over_period(state, now, policy.scale_down_delay, |s| {
        s.utilisation() < policy.scale_down_threshold && s.queued == 0
    });
    if let Some(period) = down
        && current > min
    {
        let demand = period.iter().map(Sample::demand).fold(0.0, f64::max);
        let to = sized_for(demand).clamp(min, current - 1);
        let util = period.iter().map(Sample::utilisation).fold(0.0, f64::max);
        state.last_change = Some(now);
        return decision(
            to,
            format!(
                "utilisation {} < {:.2} for {}s, queue 0",
                show_ratio(util),
                policy.scale_down_threshold,
                policy.scale_down_delay.as_secs()
            ),
        );
    }
    None
}

fn show_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}")
    } else {
        "∞ (no capacity)".to_owned()
    }
}

/// The samples of the last `period` when they cover it and all satisfy `condition`.
fn over_period(
    state: &AutoscaleState,
    now: Timestamp,
    period: Duration,
    condition: impl Fn(&Sample) -> bool,
) -> Option<Vec<Sample>> {
    let since = now - duration(period);
    // History must reach back to the start of the period, or it is not known to hold throughout.
    if state.samples.front().is_none_or(|s| s.at > since) {
        return None;
    }
    let recent: Vec<Sample> = state
        .samples
        .iter()
        .filter(|s| s.at >= since)
        .copied()
        .collect();
    (!recent.is_empty() && recent.iter().all(condition)).then_some(recent)
}

/// An instance as scale-down sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Victim<Id> {
    pub id: Id,
    pub created_at: Timestamp,
    pub load: u32,
}

/// The `n` instances to remove: idle ones first, oldest first among equals, then the least
/// loaded (they drain fastest).
pub fn choose_victims<Id: Copy>(instances: &[Victim<Id>], n: usize) -> Vec<Id> {
    let mut sorted: Vec<_> = instances.to_vec();
    sorted.sort_by_key(|v| (v.load, v.created_at));
    sorted.into_iter().take(n).map(|v| v.id).collect()
}

#[cfg(test)]
mod tests;
