//! Reading the control plane's own `/metrics` (Prometheus text): task latency from the
//! `ai_task_duration_seconds` histogram and the agent-call error rate from
//! `ai_agent_requests_total`. These are counters since the server started.

use std::collections::BTreeMap;

/// What `/metrics` says about performance since the server started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSummary {
    /// Tasks that reached a terminal state.
    pub tasks_finished: u64,
    /// p95 of the time from submission to the terminal state, interpolated in the histogram's
    /// buckets as Prometheus' `histogram_quantile` does; `None` when no task finished.
    pub task_p95_s: Option<f64>,
    /// `/execute` calls, and those that ended in `error` or `timeout` (an agent's refusal of a
    /// bad task, `rejected`, is the client's fault and not counted as an error).
    pub execute_calls: u64,
    pub execute_errors: u64,
}

impl MetricsSummary {
    /// Errors over calls; `None` without calls.
    pub fn error_rate(&self) -> Option<f64> {
        (self.execute_calls > 0).then(|| self.execute_errors as f64 / self.execute_calls as f64)
    }
}

/// A sample line's labels.
type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One sample line: name, labels, value.
fn sample(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            let labels = line[open + 1..close]
                .split(',')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.trim(), v.trim().trim_matches('"')))
                })
                .collect();
            (&line[..open], labels, &line[close + 1..])
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

fn label<'a>(labels: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The q-quantile of cumulative buckets `(upper bound, count)` sorted by bound, interpolated
/// linearly inside the bucket that holds it (as Prometheus' `histogram_quantile`). `None` when
/// the histogram is empty.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                // Above the highest finite bucket: its bound is the best answer there is.
                return Some(lower_bound);
            }
            let in_bucket = count - lower_count;
            if in_bucket <= 0.0 {
                return Some(bound);
            }
            return Some(lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket);
        }
        lower_bound = bound;
        lower_count = count;
    }
    Some(lower_bound)
}

/// Reads the summary out of `/metrics` text (classic or OpenMetrics).
pub fn summarise_metrics(text: &str) -> MetricsSummary {
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    let mut summary = MetricsSummary::default();
    let mut finished = 0.0;
    let mut calls = 0.0;
    let mut errors = 0.0;
    for line in text.lines() {
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        match name {
            "ai_task_duration_seconds_bucket" => {
                if let Some(le) = label(&labels, "le").and_then(|le| match le {
                    "+Inf" => Some(f64::INFINITY),
                    v => v.parse::<f64>().ok(),
                }) {
                    // Keyed by the bound's bits so that equal bounds of different label sets
                    // are summed; positive floats order like their bits.
                    let entry = buckets.entry(le.to_bits()).or_insert((le, 0.0));
                    entry.1 += value;
                }
            }
            "ai_task_duration_seconds_count" => finished += value,
            "ai_agent_requests_total" if label(&labels, "endpoint") == Some("execute") => {
                calls += value;
                if matches!(label(&labels, "status"), Some("error" | "timeout")) {
                    errors += value;
                }
            }
            _ => {}
        }
    }
    let buckets: Vec<(f64, f64)> = buckets.into_values().collect();
    summary.tasks_finished = finished.max(0.0) as u64;
    summary.task_p95_s = histogram_quantile(0.95, &buckets);
    summary.execute_calls = calls.max(0.0) as u64;
    summary.execute_errors = errors.max(0.0) as u64;
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP ai_task_duration_seconds Time
# TYPE ai_task_duration_seconds histogram
ai_task_duration_seconds_sum{agent_type="a",status="succeeded"} 12.0
ai_task_duration_seconds_count{agent_type="a",status="succeeded"} 10
ai_task_duration_seconds_bucket{le="1.0",agent_type="a",status="succeeded"} 5
ai_task_duration_seconds_bucket{le="5.0",agent_type="a",status="succeeded"} 9
ai_task_duration_seconds_bucket{le="+Inf",agent_type="a",status="succeeded"} 10
ai_task_duration_seconds_count{agent_type="b",status="failed"} 10
ai_task_duration_seconds_bucket{le="1.0",agent_type="b",status="failed"} 10
ai_task_duration_seconds_bucket{le="5.0",agent_type="b",status="failed"} 10
ai_task_duration_seconds_bucket{le="+Inf",agent_type="b",status="failed"} 10
ai_agent_requests_total{agent_type="a",status="success",endpoint="execute"} 97
ai_agent_requests_total{agent_type="a",status="error",endpoint="execute"} 2
ai_agent_requests_total{agent_type="a",status="timeout",endpoint="execute"} 1
ai_agent_requests_total{agent_type="a",status="rejected",endpoint="execute"} 5
ai_agent_requests_total{agent_type="a",status="error",endpoint="health"} 50
"#;

    #[test]
    fn histograms_are_summed_across_label_sets_and_interpolated() {
        let s = summarise_metrics(TEXT);
        assert_eq!(s.tasks_finished, 20);
        // 20 tasks: rank 19 falls in (1, 5] holding 4 (15 → 19): 1 + 4 * 4/4 = 5.
        assert_eq!(s.task_p95_s, Some(5.0));
    }

    #[test]
    fn errors_count_execute_errors_and_timeouts_only() {
        let s = summarise_metrics(TEXT);
        assert_eq!(s.execute_calls, 105);
        assert_eq!(s.execute_errors, 3);
        assert!((s.error_rate().unwrap_or(0.0) - 3.0 / 105.0).abs() < 1e-9);
    }

    #[test]
    fn empty_metrics_measure_nothing() {
        let s = summarise_metrics("# EOF\n");
        assert_eq!(s.task_p95_s, None);
        assert_eq!(s.error_rate(), None);
    }

    #[test]
    fn quantiles_in_the_open_bucket_give_the_highest_finite_bound() {
        let buckets = [(1.0, 0.0), (5.0, 1.0), (f64::INFINITY, 100.0)];
        assert_eq!(histogram_quantile(0.95, &buckets), Some(5.0));
        assert_eq!(histogram_quantile(0.5, &[(1.0, 0.0)]), None);
        // Linear interpolation inside the first bucket starts at 0.
        assert_eq!(
            histogram_quantile(0.5, &[(2.0, 10.0), (f64::INFINITY, 10.0)]),
            Some(1.0)
        );
    }
}
