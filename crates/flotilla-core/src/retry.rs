//! What happens after an attempt fails: the rules of docs/design.md §4.
//!
//! An agent's `4xx` (other than 408 and 429) means the task itself is wrong: failed, not retried.
//! A timeout, a connection error, a `5xx`, `408`, `429` or an unreadable answer is the agent's or
//! the network's fault: retried on another instance after exponential backoff with jitter, until
//! the task's attempts run out.

use crate::Timestamp;
use crate::egress::Refusal;
use crate::task::{AttemptResult, TaskStatus};
use std::time::Duration;

/// Why a dispatch attempt did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DispatchFailure {
    /// No answer before the attempt's deadline.
    Timeout,
    /// The instance could not be reached. `reason` is safe to show anyone; `detail` is the whole
    /// cause chain, which may name the instance's URL.
    Connect {
        reason: ConnectReason,
        detail: String,
    },
    /// The egress policy (`[agents_egress]`) refused every address of the instance.
    Refused(Refusal),
    /// The instance answered with a non-2xx status (not a redirect).
    Status { code: u16, body: String },
    /// The instance answered with a redirect, which is never followed.
    Redirect { code: u16 },
    /// The answer was longer than `limit` bytes; no more than that was kept.
    TooLarge { limit: u64 },
    /// The instance answered 2xx with a body that is not the contract's JSON.
    InvalidResponse(String),
}

/// Why an instance could not be reached, in words that name neither its URL nor anything it
/// sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectReason {
    /// Nothing listens (connection refused).
    Refused,
    /// The connection closed or reset before an answer.
    Closed,
    /// Its host name did not resolve.
    Dns,
    /// The TLS handshake failed (certificate not trusted, protocol).
    Tls,
    /// The instance was marked failed while the attempt ran.
    InstanceFailed,
    /// Any other transport error.
    Other,
}

impl ConnectReason {
    /// The reason as shown in a task's error.
    pub fn describe(self) -> &'static str {
        match self {
            ConnectReason::Refused => "connection refused",
            ConnectReason::Closed => "connection closed before an answer",
            ConnectReason::Dns => "its host name did not resolve",
            ConnectReason::Tls => "TLS: the handshake failed",
            ConnectReason::InstanceFailed => "the instance failed while the attempt ran",
            ConnectReason::Other => "connection failed",
        }
    }
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

    /// The whole description, for logs and traces (operators may see an instance's URL and
    /// what it answered).
    pub fn describe(&self) -> String {
        self.describe_for(true)
    }

    /// A one-line description for the task's error field. `own`: the instance belongs to the
    /// task's tenant, which may see what it answered; otherwise the text says what happened
    /// (status, rule, reason) but never quotes the agent's body nor names its URL.
    pub fn describe_for(&self, own: bool) -> String {
        let text = match self {
            DispatchFailure::Timeout => {
                "agent did not answer before the attempt deadline".to_owned()
            }
            DispatchFailure::Connect { detail, .. } if own => {
                format!("agent unreachable: {detail}")
            }
            DispatchFailure::Connect { reason, .. } => {
                format!("agent unreachable: {}", reason.describe())
            }
            DispatchFailure::Refused(refusal) if own => format!("agent unreachable: {refusal}"),
            DispatchFailure::Refused(refusal) => format!(
                "agent unreachable: its address is {} (agents_egress)",
                refusal.rule.describe()
            ),
            DispatchFailure::Status { code, body } if own => {
                let body: String = body.chars().take(500).collect();
                format!("agent answered HTTP {code}: {body}")
            }
            DispatchFailure::Status { code, .. } => {
                format!("agent answered HTTP {code} (its body is withheld)")
            }
            DispatchFailure::Redirect { code } => {
                format!("agent answered HTTP {code}, a redirect: redirects are not followed")
            }
            DispatchFailure::TooLarge { limit } => {
                format!("agent's answer is larger than the limit of {limit} bytes")
            }
            DispatchFailure::InvalidResponse(e) if own => {
                format!("agent answered with an invalid body: {e}")
            }
            DispatchFailure::InvalidResponse(_) => {
                "agent answered with an invalid body (details withheld)".to_owned()
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

/// Decides the result of attempt number `attempt` of a task with `max_attempts`, which failed;
/// `own` says whether the instance belongs to the task's tenant ([`DispatchFailure::describe_for`]).
pub fn after_failure(
    failure: &DispatchFailure,
    own: bool,
    attempt: i32,
    max_attempts: i32,
    policy: BackoffPolicy,
    now: Timestamp,
    jitter: f64,
) -> AttemptResult {
    let error = failure.describe_for(own);
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
            let result = after_failure(&status(code), true, 1, 3, POLICY, now(), 0.5);
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
            DispatchFailure::Connect {
                reason: ConnectReason::Refused,
                detail: "refused".into(),
            },
            DispatchFailure::Redirect { code: 302 },
            DispatchFailure::TooLarge { limit: 10 },
        ];
        for failure in &transient {
            assert!(matches!(
                after_failure(failure, false, 1, 3, POLICY, now(), 0.5),
                AttemptResult::Retry { .. }
            ));
            assert!(matches!(
                after_failure(failure, false, 3, 3, POLICY, now(), 0.5),
                AttemptResult::Terminal { .. }
            ));
        }
    }

    #[test]
    fn a_final_timeout_is_timed_out_and_a_final_error_is_failed() {
        let timed_out = after_failure(&DispatchFailure::Timeout, true, 2, 2, POLICY, now(), 0.0);
        assert!(matches!(
            timed_out,
            AttemptResult::Terminal {
                status: TaskStatus::TimedOut,
                ..
            }
        ));
        let failed = after_failure(&status(502), true, 2, 2, POLICY, now(), 0.0);
        assert!(matches!(
            failed,
            AttemptResult::Terminal {
                status: TaskStatus::Failed,
                ..
            }
        ));
    }

    #[test]
    fn only_the_owning_tenant_sees_what_an_agent_answered() {
        let secret = "s3cret at http://10.1.2.3:8080/execute";
        let failures = [
            DispatchFailure::Status {
                code: 500,
                body: secret.into(),
            },
            DispatchFailure::Connect {
                reason: ConnectReason::Refused,
                detail: secret.into(),
            },
            DispatchFailure::InvalidResponse(secret.into()),
            DispatchFailure::Refused(crate::egress::Refusal {
                ip: std::net::IpAddr::from([10, 1, 2, 3]),
                rule: crate::egress::Rule::Metadata,
            }),
        ];
        for failure in &failures {
            let other = failure.describe_for(false);
            assert!(
                !other.contains("s3cret") && !other.contains("10.1.2.3"),
                "{other}"
            );
            let own = failure.describe_for(true);
            assert!(own.contains("s3cret") || own.contains("10.1.2.3"), "{own}");
        }
        assert_eq!(
            failures[0].describe_for(false),
            "agent answered HTTP 500 (its body is withheld)"
        );
        assert!(
            failures[3]
                .describe_for(false)
                .contains("a cloud metadata address (agents_egress)")
        );
        let error = |own| match after_failure(&failures[0], own, 3, 3, POLICY, now(), 0.5) {
            AttemptResult::Terminal { error, .. } | AttemptResult::Retry { error, .. } => error,
            AttemptResult::Succeeded { .. } => String::new(),
        };
        assert!(error(true).contains("s3cret") && !error(false).contains("s3cret"));
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
