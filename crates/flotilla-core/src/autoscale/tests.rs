use super::*;
use chrono::{TimeZone, Utc};
use proptest::prelude::{prop_assert, proptest};

fn at(s: i64) -> Timestamp {
    Utc.timestamp_opt(1_700_000_000 + s, 0)
        .single()
        .unwrap_or_default()
}

/// A pool of `n` instances of capacity `cap` facing `demand` tasks wanting a slot.
fn sample(t: i64, n: u32, cap: u32, demand: u32) -> Sample {
    let load = demand.min(n * cap);
    Sample {
        at: at(t),
        instances: n,
        capacity_per_instance: cap,
        load,
        queued: u64::from(demand - load),
    }
}

/// Runs the autoscaler every 5 s for `secs` against a demand profile, applying each decision at
/// once; returns the decisions with their times.
fn drive(
    policy: &AutoscalePolicy,
    start: u32,
    cap: u32,
    secs: i64,
    demand: impl Fn(i64) -> u32,
) -> Vec<(i64, ScaleDecision)> {
    let mut state = AutoscaleState::default();
    let mut n = start;
    let mut decisions = Vec::new();
    for t in (0..secs).step_by(5) {
        if let Some(d) = decide(policy, &mut state, sample(t, n, cap, demand(t))) {
            n = d.to;
            decisions.push((t, d));
        }
    }
    decisions
}

#[test]
fn scales_up_after_the_delay_with_its_reason() {
    let policy = AutoscalePolicy::default();
    let decisions = drive(&policy, 3, 4, 120, |_| 11);
    let (t, first) = &decisions[0];
    assert_eq!(*t, 30, "after scale_up_delay of 30 s");
    // Demand 11 at target 0.6 of 4 slots each: ceil(11 / 2.4) = 5.
    assert_eq!((first.from, first.to), (3, 5));
    assert_eq!(first.reason, "utilisation 0.92 > 0.80 for 30s, queue 0");
    assert_eq!(decisions.len(), 1, "{decisions:?}");
}

#[test]
fn a_queue_alone_triggers_scale_up() {
    let policy = AutoscalePolicy::default();
    // 2 instances × 4 slots, 30 tasks: 8 running, 22 queued.
    let decisions = drive(&policy, 2, 4, 40, |_| 30);
    assert_eq!(decisions[0].1.to, 10);
    assert!(decisions[0].1.reason.ends_with("queue 22"));
}

#[test]
fn scale_down_waits_for_the_long_delay_and_keeps_headroom() {
    let policy = AutoscalePolicy::default();
    let decisions = drive(&policy, 8, 4, 400, |_| 2);
    let (t, d) = &decisions[0];
    assert_eq!(*t, 300);
    assert_eq!((d.from, d.to), (8, 1));
    assert_eq!(d.reason, "utilisation 0.06 < 0.20 for 300s, queue 0");
}

#[test]
fn bounds_apply_at_once() {
    let policy = AutoscalePolicy {
        min: 2,
        max: 4,
        ..AutoscalePolicy::default()
    };
    let mut state = AutoscaleState::default();
    let d = decide(&policy, &mut state, sample(0, 0, 4, 0));
    assert_eq!(d.map(|d| d.to), Some(2));
    let d = decide(&policy, &mut state, sample(1, 6, 4, 0));
    assert_eq!(d.map(|d| d.to), Some(4));
    // Heavy demand never goes over the maximum.
    let decisions = drive(&policy, 2, 4, 600, |_| 1000);
    assert_eq!(decisions.last().map(|(_, d)| d.to), Some(4));
}

#[test]
fn cooldown_spaces_changes() {
    let policy = AutoscalePolicy {
        max: 100,
        ..AutoscalePolicy::default()
    };
    // Demand rising steadily: each scale-up is at least cooldown + delay after the previous.
    let decisions = drive(&policy, 1, 4, 1200, |t| (t / 10) as u32);
    assert!(decisions.len() >= 3, "{decisions:?}");
    for pair in decisions.windows(2) {
        assert!(pair[1].0 - pair[0].0 >= 60, "{decisions:?}");
        assert!(pair[1].1.to > pair[0].1.to, "only ups while demand rises");
    }
}

#[test]
fn empty_pool_with_work_scales_up() {
    let policy = AutoscalePolicy {
        min: 0,
        ..AutoscalePolicy::default()
    };
    let decisions = drive(&policy, 0, 4, 60, |_| 3);
    assert_eq!(decisions[0].1.to, 2);
    assert!(decisions[0].1.reason.contains("no capacity"));
}

#[test]
fn victims_are_idle_and_oldest_first() {
    let v = |id: u32, created: i64, load: u32| Victim {
        id,
        created_at: at(created),
        load,
    };
    let instances = [v(1, 10, 0), v(2, 5, 1), v(3, 20, 0), v(4, 1, 0)];
    assert_eq!(choose_victims(&instances, 2), vec![4, 1]);
    assert_eq!(choose_victims(&instances, 4), vec![4, 1, 3, 2]);
}

proptest! {
    /// Under any steady demand, the pool converges without ever reversing a change: no
    /// scale-down follows a scale-up (or the other way round) while nothing changes.
    #[test]
    fn steady_demand_never_thrashes(
        demand in 0u32..400,
        start in 1u32..30,
        cap in 1u32..16,
    ) {
        let policy = AutoscalePolicy { max: 50, ..AutoscalePolicy::default() };
        let decisions = drive(&policy, start, cap, 4 * 3600, |_| demand);
        let ups = decisions.iter().filter(|(_, d)| d.to > d.from).count();
        let downs = decisions.iter().filter(|(_, d)| d.to < d.from).count();
        prop_assert!(ups == 0 || downs == 0, "thrash: {:?}", decisions);
        prop_assert!(decisions.len() <= 3, "did not settle: {:?}", decisions);
    }
}
