use super::{BalancerState, Candidate, PickRequest, StrategyKind, pick};
use crate::agent::AgentStatus;
use crate::id::AgentId;
use proptest::prelude::{Strategy as _, any, prop_assert, prop_assert_eq, proptest};
use uuid::Uuid;

fn candidate(n: u128, status: AgentStatus, capacity: u32, load: u32) -> Candidate {
    Candidate::new(AgentId(Uuid::from_u128(n)), status, capacity, load)
}

fn idle(n: u128) -> Candidate {
    candidate(n, AgentStatus::Idle, 1_000_000, 0)
}

fn run(kind: StrategyKind, cs: &mut [Candidate], picks: usize) -> Vec<usize> {
    let mut state = BalancerState::default();
    (0..picks)
        .map(|k| {
            let request = PickRequest {
                random: (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ..PickRequest::default()
            };
            pick(&kind.into(), &mut state, cs, &request).unwrap_or(usize::MAX)
        })
        .collect()
}

#[test]
fn round_robin_visits_every_instance_in_turn() {
    let mut cs: Vec<_> = (0..3).map(idle).collect();
    assert_eq!(
        run(StrategyKind::RoundRobin, &mut cs, 6),
        vec![0, 1, 2, 0, 1, 2]
    );
}

#[test]
fn least_connections_prefers_the_fewest_in_flight() {
    let mut cs = vec![
        candidate(1, AgentStatus::Busy, 10, 3),
        candidate(2, AgentStatus::Busy, 2, 1),
        candidate(3, AgentStatus::Busy, 4, 2),
    ];
    assert_eq!(run(StrategyKind::LeastConnections, &mut cs, 1), vec![1]);
}

#[test]
fn smooth_weighted_round_robin_interleaves() {
    let mut cs: Vec<_> = (0..3).map(idle).collect();
    cs[0].weight = 5;
    let picks = run(StrategyKind::WeightedRoundRobin, &mut cs, 7);
    // Nginx's classic example: a a b a c a a — never five in a row.
    assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn score_prefers_success_speed_and_fit() {
    let mut cs: Vec<_> = (0..3).map(idle).collect();
    cs[0].success_rate = 0.5;
    cs[1].latency_ms = 100.0;
    cs[2].latency_ms = 50.0;
    cs[0].latency_ms = 50.0;
    let mut state = BalancerState::default();
    let strategy = BalanceStrategy::from(StrategyKind::Score);
    assert_eq!(
        pick(&strategy, &mut state, &mut cs, &PickRequest::default()),
        Some(2)
    );
    // A complex task goes to the capable instance when the rest is equal.
    let mut cs: Vec<_> = (0..2).map(idle).collect();
    cs[0].capability = 0.1;
    cs[1].capability = 0.9;
    let request = PickRequest {
        complexity: Some(0.9),
        ..PickRequest::default()
    };
    assert_eq!(pick(&strategy, &mut state, &mut cs, &request), Some(1));
}

#[test]
fn p2c_never_picks_the_costliest_of_several() {
    let mut cs: Vec<_> = (0..4).map(idle).collect();
    for (i, c) in cs.iter_mut().enumerate() {
        c.latency_ms = 10.0 * (i as f64 + 1.0);
    }
    let picks = run(StrategyKind::P2cEwma, &mut cs, 1000);
    assert!(!picks.contains(&3));
    // The fastest wins every duel it is drawn into: about half of all picks (3 of 6 pairs).
    let fastest = picks.iter().filter(|&&i| i == 0).count();
    assert!((350..650).contains(&fastest), "{fastest}");
}

#[test]
fn p2c_weighs_load_against_latency() {
    let mut cs = vec![idle(1), idle(2)];
    cs[0].latency_ms = 10.0;
    cs[0].load = 9; // cost 100
    cs[1].latency_ms = 40.0; // cost 40
    assert_eq!(run(StrategyKind::P2cEwma, &mut cs, 1), vec![1]);
}

#[test]
fn avoids_the_instance_a_retry_failed_on_when_another_has_room() {
    for kind in StrategyKind::ALL {
        let mut cs = vec![idle(1), candidate(2, AgentStatus::Busy, 4, 3)];
        let avoid = Some(cs[0].id);
        let request = PickRequest {
            avoid,
            ..PickRequest::default()
        };
        let mut state = BalancerState::default();
        assert_eq!(
            pick(&kind.into(), &mut state, &mut cs, &request),
            Some(1),
            "{kind}"
        );
        assert_eq!(
            pick(&kind.into(), &mut state, &mut cs[..1], &request),
            Some(0),
            "{kind}"
        );
    }
}

fn arbitrary_candidates() -> impl proptest::strategy::Strategy<Value = Vec<Candidate>> {
    proptest::collection::vec(
        (
            0usize..7,
            1u32..8,
            0u32..9,
            1u32..5,
            0.0f64..500.0,
            0.0f64..=1.0,
        ),
        0..30,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (s, cap, load, weight, latency, success))| {
                let mut c = candidate(i as u128, AgentStatus::ALL[s], cap, load);
                c.weight = weight;
                c.latency_ms = latency;
                c.success_rate = success;
                c
            })
            .collect()
    })
}

use super::Strategy as BalanceStrategy;

proptest! {
    #[test]
    fn no_strategy_picks_an_instance_without_room(
        mut cs in arbitrary_candidates(),
        kind in 0usize..5,
        random in any::<u64>(),
        cursor in 0usize..40,
    ) {
        let kind = StrategyKind::ALL[kind];
        let mut state = BalancerState { cursor };
        let request = PickRequest { random, ..PickRequest::default() };
        match pick(&BalanceStrategy::from(kind), &mut state, &mut cs, &request) {
            Some(i) => prop_assert!(cs[i].has_room(), "{kind} picked {:?}", cs[i]),
            None => prop_assert!(cs.iter().all(|c| !c.has_room()), "{kind} found nothing"),
        }
    }

    #[test]
    fn weighted_choice_matches_the_weights_exactly_over_a_cycle(
        weights in proptest::collection::vec(1u32..10, 1..12),
        cycles in 1usize..4,
    ) {
        let mut cs: Vec<_> = weights.iter().enumerate().map(|(i, &w)| {
            let mut c = idle(i as u128);
            c.weight = w;
            c
        }).collect();
        let total: u32 = weights.iter().sum();
        let picks = run(StrategyKind::WeightedRoundRobin, &mut cs, total as usize * cycles);
        for (i, &w) in weights.iter().enumerate() {
            let n = picks.iter().filter(|&&p| p == i).count();
            prop_assert_eq!(n, w as usize * cycles);
        }
    }
}

#[test]
fn strategy_names_are_pinned() {
    use strum::IntoEnumIterator;
    crate::enum_names::assert_names(
        &[
            (StrategyKind::RoundRobin, "round_robin"),
            (StrategyKind::LeastConnections, "least_connections"),
            (StrategyKind::WeightedRoundRobin, "weighted_round_robin"),
            (StrategyKind::Score, "score"),
            (StrategyKind::P2cEwma, "p2c_ewma"),
        ],
        StrategyKind::as_str,
        |name| name.parse().ok(),
    );
    assert_eq!(
        StrategyKind::ALL.to_vec(),
        StrategyKind::iter().collect::<Vec<_>>()
    );
    assert_eq!(StrategyKind::P2cEwma.to_string(), "p2c_ewma");
    assert_eq!(
        "random".parse::<StrategyKind>().err().as_deref(),
        Some(
            "`random` is not a strategy (one of round_robin, least_connections, \
             weighted_round_robin, score, p2c_ewma)"
        )
    );
}
