//! Cost of one placement decision per strategy over pools of 100, 1,000 and 10,000 instances.
//! Run: `cargo bench -p flotilla-core --bench balance`. Prints the median and p99 of the time per
//! pick (over many timed batches), so figures on a shared machine stay comparable in one run.

use flotilla_core::agent::AgentStatus;
use flotilla_core::balance::{BalancerState, Candidate, PickRequest, Strategy, StrategyKind, pick};
use flotilla_core::id::AgentId;
use std::hint::black_box;
use std::time::Instant;

fn pool(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| {
            let mut c = Candidate::new(
                AgentId(uuid::Uuid::from_u128(i as u128)),
                AgentStatus::Busy,
                8,
                (i % 8) as u32,
            );
            c.weight = 1 + (i % 4) as u32;
            c.latency_ms = 50.0 + (i % 97) as f64;
            c.success_rate = 0.9 + (i % 10) as f64 / 100.0;
            c
        })
        .collect()
}

fn main() {
    println!(
        "{:<22} {:>10} {:>14} {:>14}",
        "strategy", "instances", "median µs/pick", "p99 µs/pick"
    );
    for n in [100usize, 1_000, 10_000] {
        for kind in StrategyKind::ALL {
            let mut candidates = pool(n);
            let strategy = Strategy::from(kind);
            let mut state = BalancerState::default();
            let mut random = 0x9E37_79B9_7F4A_7C15u64;
            let batch = (200_000 / n).max(10);
            let mut per_pick = Vec::with_capacity(200);
            for _ in 0..200 {
                let started = Instant::now();
                for _ in 0..batch {
                    random = random.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let request = PickRequest {
                        complexity: Some(0.5),
                        avoid: None,
                        random,
                    };
                    black_box(pick(&strategy, &mut state, &mut candidates, &request));
                }
                per_pick.push(started.elapsed().as_secs_f64() * 1e6 / batch as f64);
            }
            per_pick.sort_by(f64::total_cmp);
            println!(
                "{:<22} {:>10} {:>14.2} {:>14.2}",
                kind.as_str(),
                n,
                per_pick[per_pick.len() / 2],
                per_pick[per_pick.len() * 99 / 100]
            );
        }
    }
}
