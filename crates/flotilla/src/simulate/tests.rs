use super::engine::Sim;
use super::*;
use flotilla_core::balance::StrategyKind;

/// A small pool that runs in well under a second in a debug build.
fn small(seed: u64) -> Config {
    Config {
        tasks: 5_000,
        instances: 8,
        ..Config::new(seed)
    }
}

fn with_rate(mut c: Config, load: f64) -> Config {
    c.rate = load * c.nominal_throughput();
    c
}

/// Runs step by step, checking the engine's counters against a recount after every event.
fn checked(config: &Config, kind: StrategyKind) -> Report {
    let mut sim = Sim::new(config, kind);
    sim.start();
    let mut events = 0u64;
    while sim.step() {
        events += 1;
        if let Err(e) = sim.check_counters() {
            unreachable!("after event {events} under {kind}: {e}");
        }
    }
    sim.report()
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let config = small(7);
    for kind in StrategyKind::ALL {
        assert_eq!(simulate(&config, kind), simulate(&config, kind), "{kind}");
    }
    let other = simulate(&small(8), StrategyKind::P2cEwma);
    assert_ne!(simulate(&config, StrategyKind::P2cEwma), other);
}

#[test]
fn every_arrived_task_ends_completed_or_failed() {
    // Failures, ejections, bursts, scale-ups and drains all at once.
    let mut config = with_rate(
        Config {
            bad_share: 0.25,
            failure_rate: 0.05,
            profile: Profile::Burst,
            ..small(3)
        },
        0.8,
    );
    config.autoscale = Some(Autoscaling {
        min: 2,
        max: 16,
        startup: Duration::from_secs(5),
        interval: Duration::from_secs(5),
    });
    for kind in StrategyKind::ALL {
        let r = checked(&config, kind);
        assert_eq!(r.arrived, config.tasks, "{kind}");
        assert_eq!(r.completed + r.failed, r.arrived, "{kind}");
        assert_eq!(r.stranded, 0, "{kind}");
        assert!(r.retries > 0, "{kind}: failures should happen");
        assert!(r.attempts >= r.arrived, "{kind}");
    }
}

#[test]
fn with_one_very_slow_instance_p2c_ewma_and_least_connections_beat_round_robin_on_p99() {
    // Ten instances, one of them ten times slower, no failures, half loaded.
    let config = with_rate(
        Config {
            tasks: 20_000,
            instances: 10,
            slow_share: 0.1,
            slow_factor: 10.0,
            bad_share: 0.0,
            failure_rate: 0.0,
            ..Config::new(42)
        },
        0.5,
    );
    let p99 = |kind| simulate(&config, kind).latency.p99_ms;
    let (rr, lc, p2c) = (
        p99(StrategyKind::RoundRobin),
        p99(StrategyKind::LeastConnections),
        p99(StrategyKind::P2cEwma),
    );
    // Round robin sends the slow instance a task whenever it has room; least connections only
    // when it is the least loaded; p2c_ewma also sees its latency.
    assert!(lc < rr, "least_connections {lc} ms vs round_robin {rr} ms");
    assert!(p2c < lc, "p2c_ewma {p2c} ms vs least_connections {lc} ms");
    assert!(p2c < rr * 0.6, "p2c_ewma {p2c} ms vs round_robin {rr} ms");
}

#[test]
fn autoscaling_under_a_ramp_adds_instances_for_reasons_from_the_core() {
    let mut config = with_rate(
        Config {
            tasks: 30_000,
            instances: 4,
            profile: Profile::Ramp,
            ..Config::new(5)
        },
        1.0,
    );
    config.autoscale = Some(Autoscaling {
        min: 2,
        max: 40,
        startup: Duration::from_secs(5),
        interval: Duration::from_secs(5),
    });
    let r = checked(&config, StrategyKind::P2cEwma);
    let ups: Vec<_> = r.scale_events.iter().filter(|e| e.to > e.from).collect();
    assert!(!ups.is_empty(), "{:?}", r.scale_events);
    assert!(r.peak_instances > 4, "peak {}", r.peak_instances);
    for e in &ups {
        // The core's wording (flotilla_core::autoscale::decide).
        assert!(
            e.reason.starts_with("utilisation ") && e.reason.contains(" > 0.80 for 30s"),
            "{}",
            e.reason
        );
    }
    let held = r.series.instances.iter().copied();
    assert!(held.clone().max() > r.series.instances.first().copied());
    assert_eq!(r.completed + r.failed, r.arrived);
}

#[test]
fn autoscaling_drains_a_pool_that_is_mostly_idle() {
    let mut config = with_rate(
        Config {
            tasks: 15_000,
            instances: 20,
            ..Config::new(9)
        },
        0.1,
    );
    config.autoscale = Some(Autoscaling {
        min: 2,
        max: 40,
        startup: Duration::from_secs(5),
        interval: Duration::from_secs(5),
    });
    let r = checked(&config, StrategyKind::LeastConnections);
    let down = r.scale_events.iter().find(|e| e.to < e.from);
    assert!(
        down.is_some_and(|e| e.reason.contains(" < 0.20 for 300s, queue 0")),
        "{:?}",
        r.scale_events
    );
    assert!(
        r.series.instances.last() < r.series.instances.first(),
        "{:?} {:?}",
        r.series.instances,
        r.scale_events
    );
    assert_eq!(r.completed + r.failed, r.arrived);
    // Fewer instances held for part of the run cost less than twenty for all of it.
    assert!(r.instance_hours < 20.0 * r.simulated_s / 3600.0);
}

#[test]
fn utilisation_never_exceeds_one() {
    // Overloaded: twice what the pool can serve, so every slot is busy and tasks queue.
    let config = with_rate(small(11), 2.0);
    for kind in StrategyKind::ALL {
        let r = checked(&config, kind);
        assert!(r.mean_utilisation <= 1.0, "{kind}: {}", r.mean_utilisation);
        assert!(r.mean_utilisation > 0.9, "{kind}: {}", r.mean_utilisation);
        assert!(
            r.peak_sampled_utilisation <= 1.0,
            "{kind}: {}",
            r.peak_sampled_utilisation
        );
    }
}

#[test]
fn outlier_ejection_takes_bad_instances_out_of_rotation() {
    let config = Config {
        bad_share: 0.25,
        bad_failure_rate: 0.9,
        ..small(2)
    };
    let on = simulate(&config, StrategyKind::RoundRobin);
    let off = simulate(
        &Config {
            ejection: false,
            ..config.clone()
        },
        StrategyKind::RoundRobin,
    );
    assert!(on.ejections > 0);
    assert_eq!(off.ejections, 0);
    assert!(
        on.retries < off.retries,
        "{} vs {}",
        on.retries,
        off.retries
    );
}

#[test]
fn capacity_cost_is_instance_time_at_the_price() {
    let r = simulate(&small(1), StrategyKind::LeastConnections);
    // A fixed pool of 8 held for the whole run.
    let expected_hours = 8.0 * r.simulated_s / 3600.0;
    assert!((r.instance_hours - expected_hours).abs() < 1e-6);
    let cost = r
        .capacity_cost_usd
        .to_string()
        .parse::<f64>()
        .unwrap_or(-1.0);
    assert!((cost - expected_hours * 0.5).abs() < 1e-4, "{cost}");
}

#[test]
fn amounts_parse_and_print_exactly() {
    let parse = |s: &str| s.parse::<Usd>();
    assert_eq!(parse("0.50"), Ok(Usd::from_micros(500_000)));
    assert_eq!(parse("2"), Ok(Usd::from_micros(2_000_000)));
    assert_eq!(parse(".125"), Ok(Usd::from_micros(125_000)));
    for bad in ["", ".", "-1", "1.2.3", "0.1234567", "abc", "1e3"] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    assert_eq!(Usd::from_micros(1_234_550).to_string(), "1.2346");
    assert_eq!(Usd::from_micros(0).to_string(), "0.0000");
    // One hour of one instance at 0.50/h.
    let hour_us = 3_600_000_000u128;
    assert_eq!(
        Usd::from_micros(500_000).for_instance_time(hour_us),
        Usd::from_micros(500_000)
    );
}

#[test]
fn arrivals_follow_the_profile() {
    let mut steady = arrivals::Arrivals::new(Profile::Steady, 100.0, 10_000, 1);
    let mut last = 0;
    let mut n = 0;
    while let Some(t) = steady.next_us() {
        assert!(t >= last);
        last = t;
        n += 1;
    }
    assert_eq!(n, 10_000);
    // 10 000 arrivals at 100/s take about 100 s.
    assert!((95e6..105e6).contains(&(last as f64)), "{last}");

    // Under a ramp the second half of the run's time holds most of the arrivals.
    let mut ramp = arrivals::Arrivals::new(Profile::Ramp, 100.0, 10_000, 1);
    let horizon = Profile::Ramp.expected_duration_s(100.0, 10_000) * 1e6;
    let times: Vec<u64> = std::iter::from_fn(|| ramp.next_us()).collect();
    let early = times
        .iter()
        .filter(|&&t| (t as f64) < horizon / 2.0)
        .count();
    assert!(early < 3_500, "{early}");
}
