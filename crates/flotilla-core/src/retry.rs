//! What happens after an attempt fails: the rules of DESIGN.md §4.
//!
//! An agent's `4xx` (other than 408 and 429) means the task itself is wrong: failed, not retried.
//! A timeout, a connection error, a `5xx`, `408`, `429` or an unreadable answer is the agent's or
//! the network's fault: retried on another instance after exponential backoff with jitter, until
//! the task's attempts run out.

use crate::Timestamp;
use crate::task::{AttemptResult, TaskStatus};
use std::time::Duration;

/// Why a dispatch attempt did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DispatchFailure {
    /// No answer before the attempt's deadline.
    Timeout,
    /// The instance could not be reached (refused, reset, DNS, TLS).
    Connect(String),
    /// The instance answered with a non-2xx status.
    Status { code: u16, body: String },
    /// The instance answered 2xx with a body that is not the contract's JSON.
    InvalidResponse(String),
}

/// Who is to blame for a failure, which decides whether another instance can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The task itself was rejected; another instance would reject it too.
    Task,
    /// The instance or the network failed; another instance may succeed.
    Instance,
}

impl DispatchFailure {
    /// Who is to blame (and so whether a retry can help).
    pub fn blame(&self) -> Blame {
        match self {
            DispatchFailure::Status { code, .. }
                if (400..500).contains(code) && *code != 408 && *code != 429 =>
            {
                Blame::Task
            }
            _ => Blame::Instance,
        }
    }

    /// A one-line description for the task's error field.
    pub fn describe(&self) -> String {
        let text = match self {
            DispatchFailure::Timeout => {
                "agent did not answer before the attempt deadline".to_owned()
            }
            DispatchFailure::Connect(e) => format!("agent unreachable: {e}"),
            DispatchFailure::Status { code, body } => {
                let body: String = body.chars().take(500).collect();
                format!("agent answered HTTP {code}: {body}")
            }
            DispatchFailure::InvalidResponse(e) => {
                format!("agent answered with an invalid body: {e}")
            }
        };
        // The text comes partly from the agent; keep it printable and storable everywhere.
        text.chars()
            .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
            .collect()
    }
}

/// Backoff between attempts: `base * 2^(attempt-1)`, capped at `max`, with "equal jitter"
/// (half fixed, half random) so retries of many tasks spread out but never fire at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl BackoffPolicy {
    /// The delay before the attempt after `attempt` (1-based), given `jitter` uniform in [0, 1).
    pub fn delay(&self, attempt: i32, jitter: f64) -> Duration {
        let exponent = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        let full = self.base.saturating_mul(1u32 << exponent).min(self.max);
        let half = full / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Decides the result of attempt number `attempt` of a task with `max_attempts`, which failed.
pub fn after_failure(
    failure: &DispatchFailure,
    attempt: i32,
    max_attempts: i32,
    policy: BackoffPolicy,
    now: Timestamp,
    jitter: f64,
) -> AttemptResult {
    let error = failure.describe();
    if failure.blame() == Blame::Task {
        return AttemptResult::Terminal {
            status: TaskStatus::Failed,
            error,
        };
    }
    if attempt >= max_attempts {
        let status = if *failure == DispatchFailure::Timeout {
            TaskStatus::TimedOut
        } else {
            TaskStatus::Failed
        };
        return AttemptResult::Terminal { status, error };
    }
    let delay = policy.delay(attempt, jitter);
    let not_before = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    AttemptResult::Retry { error, not_before }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    const POLICY: BackoffPolicy = BackoffPolicy {
        base: Duration::from_millis(200),
        max: Duration::from_secs(10),
    };

    fn now() -> Timestamp {
        Utc.timestamp_opt(1_700_000_000, 0)
            .single()
            .unwrap_or_default()
    }

    fn status(code: u16) -> DispatchFailure {
        DispatchFailure::Status {
            code,
            body: String::new(),
        }
    }

    #[test]
    fn client_errors_fail_the_task_at_once() {
        for code in [400, 404, 413, 422] {
            let result = after_failure(&status(code), 1, 3, POLICY, now(), 0.5);
            assert!(
                matches!(
                    result,
                    AttemptResult::Terminal {
                        status: TaskStatus::Failed,
                        ..
                    }
                ),
                "{code}"
            );
        }
    }

    #[test]
    fn transient_failures_are_retried_until_attempts_run_out() {
        let transient = [
            status(500),
            status(503),
            status(408),
            status(429),
            DispatchFailure::Timeout,
            DispatchFailure::Connect("refused".into()),
        ];
        for failure in &transient {
            assert!(matches!(
                after_failure(failure, 1, 3, POLICY, now(), 0.5),
                AttemptResult::Retry { .. }
            ));
            assert!(matches!(
                after_failure(failure, 3, 3, POLICY, now(), 0.5),
                AttemptResult::Terminal { .. }
            ));
        }
    }

    #[test]
    fn a_final_timeout_is_timed_out_and_a_final_error_is_failed() {
        let timed_out = after_failure(&DispatchFailure::Timeout, 2, 2, POLICY, now(), 0.0);
        assert!(matches!(
            timed_out,
            AttemptResult::Terminal {
                status: TaskStatus::TimedOut,
                ..
            }
        ));
        let failed = after_failure(&status(502), 2, 2, POLICY, now(), 0.0);
        assert!(matches!(
            failed,
            AttemptResult::Terminal {
                status: TaskStatus::Failed,
                ..
            }
        ));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(POLICY.delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(POLICY.delay(2, 1.0), Duration::from_millis(400));
        assert_eq!(POLICY.delay(3, 0.0), Duration::from_millis(400));
        assert_eq!(POLICY.delay(40, 1.0), Duration::from_secs(10));
    }

    proptest! {
        #[test]
        fn backoff_stays_within_half_and_full_delay(attempt in 1i32..50, jitter in 0.0f64..1.0) {
            let full = POLICY.base.saturating_mul(1u32 << (attempt - 1).min(30)).min(POLICY.max);
            let delay = POLICY.delay(attempt, jitter);
            prop_assert!(delay >= full / 2 && delay <= full);
        }
    }
}
