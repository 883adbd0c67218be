//! Choosing the instance that gets a task: the load-balancing strategies of docs/design.md §5.
//!
//! Every strategy is a pure function over a slice of [`Candidate`]s kept by the caller in a
//! stable order; the only state they carry is a rotation cursor ([`BalancerState`]) and, for
//! smooth weighted round robin, each candidate's current weight. Randomness (for
//! power-of-two-choices) is passed in. No strategy ever picks a candidate without room: see
//! [`Candidate::has_room`].

use crate::agent::AgentStatus;
use crate::id::AgentId;
use serde::{Deserialize, Serialize};

/// What the balancer needs to know of an instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub id: AgentId,
    pub status: AgentStatus,
    pub capacity: u32,
    /// Tasks in flight on it.
    pub load: u32,
    /// Relative share of work under weighted round robin (at least 1 counts).
    pub weight: u32,
    /// Peak-EWMA latency estimate in milliseconds (the caller supplies a prior before the first
    /// observation, so that new instances are tried).
    pub latency_ms: f64,
    /// Share of recent attempts that succeeded, 0 to 1 (1 before any).
    pub success_rate: f64,
    /// How well this instance suits the pool's work, 0 to 1, from the pool's compatibility matrix.
    pub compatibility: f64,
    /// Task complexity this instance is suited to, 0 to 1.
    pub capability: f64,
    /// Smooth weighted round robin's running weight; starts at 0, owned by the strategy.
    pub current_weight: i64,
}

impl Candidate {
    /// A candidate with neutral statistics.
    pub fn new(id: AgentId, status: AgentStatus, capacity: u32, load: u32) -> Self {
        Self {
            id,
            status,
            capacity,
            load,
            weight: 1,
            latency_ms: 0.0,
            success_rate: 1.0,
            compatibility: 1.0,
            capability: 0.5,
            current_weight: 0,
        }
    }

    /// True when the instance may take one more task.
    pub fn has_room(&self) -> bool {
        self.status.accepts_work() && self.load < self.capacity
    }

    fn free_share(&self) -> f64 {
        f64::from(self.capacity.saturating_sub(self.load)) / f64::from(self.capacity.max(1))
    }
}

/// A pool's strategy.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::VariantNames,
)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
#[strum(
    serialize_all = "snake_case",
    parse_err_ty = String,
    parse_err_fn = not_a_strategy
)]
pub enum StrategyKind {
    RoundRobin,
    LeastConnections,
    WeightedRoundRobin,
    Score,
    /// Power of two choices by peak-EWMA latency × (in-flight + 1).
    #[default]
    P2cEwma,
}

impl StrategyKind {
    /// All strategies.
    pub const ALL: [StrategyKind; 5] = [
        StrategyKind::RoundRobin,
        StrategyKind::LeastConnections,
        StrategyKind::WeightedRoundRobin,
        StrategyKind::Score,
        StrategyKind::P2cEwma,
    ];

    /// The snake_case name used in configuration and on the wire.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The error of `StrategyKind::from_str`, naming the strategies there are.
fn not_a_strategy(name: &str) -> String {
    use strum::VariantNames;
    format!(
        "`{name}` is not a strategy (one of {})",
        StrategyKind::VARIANTS.join(", ")
    )
}

/// Weights of the `score` strategy; the defaults are the classic 0.3/0.25/0.2/0.15/0.1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreWeights {
    pub success_rate: f64,
    pub response_time: f64,
    pub free_capacity: f64,
    pub compatibility: f64,
    pub complexity_fit: f64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self {
            success_rate: 0.3,
            response_time: 0.25,
            free_capacity: 0.2,
            compatibility: 0.15,
            complexity_fit: 0.1,
        }
    }
}

/// A strategy with its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Strategy {
    pub kind: StrategyKind,
    pub weights: ScoreWeights,
}

impl From<StrategyKind> for Strategy {
    fn from(kind: StrategyKind) -> Self {
        Self {
            kind,
            weights: ScoreWeights::default(),
        }
    }
}

/// The rotation cursor shared by the strategies of one pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalancerState {
    cursor: usize,
}

/// What is being placed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PickRequest {
    /// The task's complexity estimate, 0 to 1, if it has one.
    pub complexity: Option<f64>,
    /// An instance to avoid when another has room (the one a retried task last failed on).
    pub avoid: Option<AgentId>,
    /// Fresh randomness from the caller.
    pub random: u64,
}

/// Picks the index of the candidate that gets the task, or `None` when none has room.
/// Weighted round robin updates the candidates' `current_weight`s.
pub fn pick(
    strategy: &Strategy,
    state: &mut BalancerState,
    candidates: &mut [Candidate],
    request: &PickRequest,
) -> Option<usize> {
    let avoided = |c: &Candidate| request.avoid == Some(c.id);
    let any_other =
        request.avoid.is_some() && candidates.iter().any(|c| c.has_room() && !avoided(c));
    let eligible = |c: &Candidate| c.has_room() && !(any_other && avoided(c));
    let n = candidates.len();
    if n == 0 {
        return None;
    }
    let start = state.cursor % n;
    // Candidates in rotation order from the cursor, so ties spread over instances.
    let rotation = (0..n).map(|k| (start + k) % n);
    let chosen = match strategy.kind {
        StrategyKind::RoundRobin => rotation.clone().find(|&i| eligible(&candidates[i])),
        StrategyKind::LeastConnections => rotation
            .clone()
            .filter(|&i| eligible(&candidates[i]))
            .min_by(|&a, &b| {
                let (a, b) = (&candidates[a], &candidates[b]);
                // Fewest in flight; among equals, the lowest utilisation (exact: a/ca < b/cb).
                a.load.cmp(&b.load).then(
                    (u64::from(a.load) * u64::from(b.capacity))
                        .cmp(&(u64::from(b.load) * u64::from(a.capacity))),
                )
            }),
        StrategyKind::WeightedRoundRobin => smooth_weighted(candidates, &eligible),
        StrategyKind::Score => {
            let best_latency = candidates
                .iter()
                .filter(|c| eligible(c))
                .map(|c| c.latency_ms)
                .fold(f64::INFINITY, f64::min);
            let mut best: Option<(usize, f64)> = None;
            for i in rotation.clone().filter(|&i| eligible(&candidates[i])) {
                let s = score(
                    &strategy.weights,
                    &candidates[i],
                    best_latency,
                    request.complexity,
                );
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((i, s));
                }
            }
            best.map(|(i, _)| i)
        }
        StrategyKind::P2cEwma => p2c(candidates, &eligible, request.random),
    };
    if let Some(i) = chosen {
        state.cursor = i + 1;
    }
    chosen
}

/// Power of two choices: two distinct eligible candidates drawn uniformly, the cheaper wins.
/// Draws are rejection-sampled from the whole slice (uniform over the eligible ones, and O(1)
/// when most are eligible); after a few misses it falls back to listing the eligible ones.
fn p2c(
    candidates: &[Candidate],
    eligible: &dyn Fn(&Candidate) -> bool,
    random: u64,
) -> Option<usize> {
    const TRIES: u32 = 16;
    let n = candidates.len() as u64;
    let mut state = random;
    let mut draw = || {
        // SplitMix64: decorrelates successive draws from one seed.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n) as usize
    };
    let mut first = None;
    for _ in 0..TRIES {
        let i = draw();
        if eligible(&candidates[i]) {
            first = Some(i);
            break;
        }
    }
    let second = first.and_then(|a| {
        (0..TRIES)
            .map(|_| draw())
            .find(|&i| i != a && eligible(&candidates[i]))
    });
    let (a, b) = match (first, second) {
        (Some(a), Some(b)) => (a, b),
        _ => {
            let pool: Vec<usize> = (0..candidates.len())
                .filter(|&i| eligible(&candidates[i]))
                .collect();
            match pool.len() {
                0 => return None,
                1 => return Some(pool[0]),
                len => {
                    let a = (random % len as u64) as usize;
                    let mut b = ((random >> 32) % (len as u64 - 1)) as usize;
                    if b >= a {
                        b += 1;
                    }
                    (pool[a], pool[b])
                }
            }
        }
    };
    if p2c_cost(&candidates[b]) < p2c_cost(&candidates[a]) {
        Some(b)
    } else {
        Some(a)
    }
}

/// Power of two choices' cost: peak-EWMA latency × (in-flight + 1), so an idle slow instance and
/// a busy fast one compare fairly. A latency of 0 (no observations) still counts the load.
fn p2c_cost(c: &Candidate) -> f64 {
    c.latency_ms.max(1e-3) * f64::from(c.load + 1)
}

/// The `score` strategy's weighted sum, each term in 0..=1.
pub fn score(w: &ScoreWeights, c: &Candidate, best_latency: f64, complexity: Option<f64>) -> f64 {
    let response_time = if c.latency_ms <= 0.0 || !best_latency.is_finite() {
        1.0
    } else {
        (best_latency.max(0.0) / c.latency_ms).clamp(0.0, 1.0)
    };
    let complexity_fit = complexity.map_or(1.0, |x| 1.0 - (x - c.capability).abs().min(1.0));
    w.success_rate * c.success_rate.clamp(0.0, 1.0)
        + w.response_time * response_time
        + w.free_capacity * c.free_share()
        + w.compatibility * c.compatibility.clamp(0.0, 1.0)
        + w.complexity_fit * complexity_fit
}

/// Nginx's smooth weighted round robin: each eligible candidate's current weight grows by its
/// weight, the largest is chosen and pays back the total. Over any run of Σw picks each candidate
/// is chosen w times, interleaved rather than in bursts.
fn smooth_weighted(
    candidates: &mut [Candidate],
    eligible: &dyn Fn(&Candidate) -> bool,
) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<(usize, i64)> = None;
    for (i, c) in candidates.iter_mut().enumerate() {
        if !eligible(c) {
            continue;
        }
        let w = i64::from(c.weight.max(1));
        c.current_weight += w;
        total += w;
        if best.is_none_or(|(_, b)| c.current_weight > b) {
            best = Some((i, c.current_weight));
        }
    }
    let (best, _) = best?;
    candidates[best].current_weight -= total;
    Some(best)
}

#[cfg(test)]
mod tests;
