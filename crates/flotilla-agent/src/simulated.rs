//! The built-in simulated agents of `flotilla agent` and `flotilla demo`.
//!
//! They do no real work: each waits a random latency, fails a configured share of calls, and
//! answers with plausible output derived deterministically from the task (the same task id and
//! input always give the same output). Every output carries `"simulated": true` and a note
//! saying so, so that nobody mistakes a demo result for a real one.
//!
//! A task's input may steer one call, which end-to-end tests use to exercise slow, failing and
//! rejected work:
//! `{"simulate": {"duration_ms": 2000, "fail": true, "reject": true}}` (each key optional;
//! `duration_ms` replaces the sampled latency, `fail` forces a transient failure, `reject` a
//! rejection of the task).
//!
//! A task whose input names a `"model"` also makes one chat completion through the control
//! plane's model gateway with the attempt's per-task token, as a real agent would, so the call is
//! attributed, budgeted and costed centrally (the gateway's own answer may be simulated too: the
//! shipped models run on its simulated provider). A budget refusal (402) rejects the task; other
//! gateway failures fail the attempt.

mod output;

use crate::{Agent, AgentError};
use flotilla_core::wire::{ExecuteRequest, ExecuteResponse};
use std::time::Duration;

/// Standard normal quantile of 0.99: how many standard deviations p99 lies above the median.
const Z_99: f64 = 2.326_347_874_040_841;
/// Samples are capped at this multiple of p99, so that the far tail of the distribution cannot
/// produce a pathological delay.
const TAIL_CAP: f64 = 4.0;

/// An agent that simulates work of its type.
#[derive(Clone, Debug)]
pub struct SimulatedAgent {
    agent_type: String,
    latency: Latency,
    failure_rate: f64,
    /// Client of the model gateway (a pool of keep-alive connections).
    http: reqwest::Client,
}

/// Latency of simulated work: log-normal, given by its median and 99th percentile.
///
/// `ln(latency)` is normal with mean `ln(median)` and standard deviation
/// `ln(p99 / median) / 2.326`, so half the calls take less than `median_ms` and 1 % take more
/// than `p99_ms` (capped at four times `p99_ms`). `median_ms == p99_ms` gives a fixed latency;
/// zero gives none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    median_ms: f64,
    p99_ms: f64,
}

/// A simulation setting out of range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SimulationError {
    /// The latency figures are negative, not finite, or p99 is below the median.
    #[error("invalid latency: median {median_ms} ms, p99 {p99_ms} ms; need 0 <= median <= p99")]
    Latency { median_ms: f64, p99_ms: f64 },
    /// The failure rate is outside [0, 1].
    #[error("invalid failure rate {0}; need a share between 0 and 1")]
    FailureRate(f64),
    /// The agent type is empty.
    #[error("the agent type must not be empty")]
    EmptyType,
}

impl Latency {
    /// A log-normal latency with the given median and 99th percentile, in milliseconds.
    pub fn new(median_ms: f64, p99_ms: f64) -> Result<Latency, SimulationError> {
        let valid =
            median_ms.is_finite() && p99_ms.is_finite() && median_ms >= 0.0 && p99_ms >= median_ms;
        if valid {
            Ok(Latency { median_ms, p99_ms })
        } else {
            Err(SimulationError::Latency { median_ms, p99_ms })
        }
    }

    /// No delay at all.
    pub const ZERO: Latency = Latency {
        median_ms: 0.0,
        p99_ms: 0.0,
    };

    pub fn median_ms(&self) -> f64 {
        self.median_ms
    }

    pub fn p99_ms(&self) -> f64 {
        self.p99_ms
    }

    /// The latency for a standard normal deviate `z`.
    fn at(&self, z: f64) -> Duration {
        if self.median_ms <= 0.0 {
            return Duration::ZERO;
        }
        let sigma = (self.p99_ms / self.median_ms).ln() / Z_99;
        let ms = (self.median_ms.ln() + sigma * z)
            .exp()
            .min(self.p99_ms * TAIL_CAP);
        Duration::from_secs_f64(ms / 1000.0)
    }

    /// Draws one latency.
    pub fn sample(&self) -> Duration {
        self.at(standard_normal())
    }
}

impl SimulatedAgent {
    /// A simulated agent of `agent_type` whose calls take `latency` and fail with probability
    /// `failure_rate`.
    pub fn new(
        agent_type: impl Into<String>,
        latency: Latency,
        failure_rate: f64,
    ) -> Result<SimulatedAgent, SimulationError> {
        let agent_type = agent_type.into();
        if agent_type.trim().is_empty() {
            return Err(SimulationError::EmptyType);
        }
        if !(0.0..=1.0).contains(&failure_rate) {
            return Err(SimulationError::FailureRate(failure_rate));
        }
        Ok(SimulatedAgent {
            agent_type,
            latency,
            failure_rate,
            http: reqwest::Client::new(),
        })
    }

    pub fn agent_type(&self) -> &str {
        &self.agent_type
    }
}

impl Agent for SimulatedAgent {
    async fn execute(&self, request: ExecuteRequest) -> Result<ExecuteResponse, AgentError> {
        if request.agent_type != self.agent_type {
            return Err(AgentError::Rejected(format!(
                "this instance runs `{}` tasks, not `{}`",
                self.agent_type, request.agent_type
            )));
        }
        let steer = Steering::from_input(&request.input);
        if steer.reject {
            return Err(AgentError::Rejected(
                "simulated rejection requested by the task input".into(),
            ));
        }

        let delay = steer.duration.unwrap_or_else(|| self.latency.sample());
        let fails = steer.fail || rand::random::<f64>() < self.failure_rate;
        // A zero delay must not go through the timer, whose 1 ms tick would add up to a
        // millisecond to work configured to take none.
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if fails {
            return Err(AgentError::Failed("simulated failure".into()));
        }
        let mut output = output::for_task(&self.agent_type, request.task_id, &request.input);
        if let (Some(model), Some(gateway)) = (
            request
                .input
                .get("model")
                .and_then(serde_json::Value::as_str),
            request.model_gateway.as_ref(),
        ) {
            let call = self.call_model(gateway, model, &request.input).await?;
            if let serde_json::Value::Object(map) = &mut output {
                map.insert("model_call".to_owned(), call);
            }
        }
        Ok(ExecuteResponse {
            output,
            usage: None,
        })
    }
}

impl SimulatedAgent {
    /// One chat completion through the gateway; returns the model, its answer and usage.
    async fn call_model(
        &self,
        gateway: &flotilla_core::wire::ModelGateway,
        model: &str,
        input: &serde_json::Value,
    ) -> Result<serde_json::Value, AgentError> {
        let prompt = input
            .get("description")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("Do the task.");
        let response = self
            .http
            .post(format!("{}/chat/completions", gateway.base_url))
            .bearer_auth(&gateway.token)
            .json(&serde_json::json!({
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 64,
            }))
            .send()
            .await
            .map_err(|e| {
                AgentError::Failed(format!("the model gateway could not be reached: {e}"))
            })?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let message = body
            .pointer("/error/message")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("no message")
            .to_owned();
        match status.as_u16() {
            200..=299 => Ok(serde_json::json!({
                "model": body.get("model"),
                "answer": body.pointer("/choices/0/message/content"),
                "usage": body.get("usage"),
            })),
            402 | 400 | 404 => Err(AgentError::Rejected(format!(
                "the model gateway refused the call ({status}): {message}"
            ))),
            _ => Err(AgentError::Failed(format!(
                "the model gateway failed ({status}): {message}"
            ))),
        }
    }
}

/// What the task input asks of one simulated call.
#[derive(Debug, Default)]
struct Steering {
    duration: Option<Duration>,
    fail: bool,
    reject: bool,
}

impl Steering {
    fn from_input(input: &serde_json::Value) -> Steering {
        let Some(simulate) = input.get("simulate") else {
            return Steering::default();
        };
        Steering {
            duration: simulate
                .get("duration_ms")
                .and_then(serde_json::Value::as_u64)
                .map(Duration::from_millis),
            fail: simulate
                .get("fail")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            reject: simulate
                .get("reject")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        }
    }
}

/// A standard normal deviate (Box–Muller).
fn standard_normal() -> f64 {
    // 1 - [0, 1) is (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rand::random::<f64>();
    let u2 = rand::random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_match_the_configuration() {
        let latency = Latency::new(100.0, 400.0).unwrap_or(Latency::ZERO);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        assert!((ms(latency.at(0.0)) - 100.0).abs() < 1e-6);
        assert!((ms(latency.at(Z_99)) - 400.0).abs() < 1e-6);
        assert!(
            (ms(latency.at(10.0)) - 1600.0).abs() < 1e-6,
            "the tail is capped"
        );
        assert_eq!(Latency::ZERO.sample(), Duration::ZERO);
        assert_eq!(
            Latency::new(50.0, 50.0).map(|l| l.at(3.0)),
            Ok(Duration::from_millis(50))
        );
    }

    #[test]
    fn settings_are_validated() {
        assert!(Latency::new(100.0, 50.0).is_err());
        assert!(Latency::new(-1.0, 50.0).is_err());
        assert!(Latency::new(f64::NAN, 50.0).is_err());
        assert!(SimulatedAgent::new("x", Latency::ZERO, 1.5).is_err());
        assert!(SimulatedAgent::new(" ", Latency::ZERO, 0.0).is_err());
        assert!(SimulatedAgent::new("x", Latency::ZERO, 1.0).is_ok());
    }

    #[test]
    fn samples_have_the_configured_median() {
        let latency = Latency::new(20.0, 80.0).unwrap_or(Latency::ZERO);
        let mut samples: Vec<Duration> = (0..2001).map(|_| latency.sample()).collect();
        samples.sort();
        let median = samples[1000].as_secs_f64() * 1000.0;
        assert!((14.0..28.0).contains(&median), "median {median} ms");
    }
}
