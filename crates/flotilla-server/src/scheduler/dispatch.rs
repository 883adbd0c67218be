//! One attempt: `POST {instance}/execute` with the §6 envelope and a deadline, signed with the
//! instance's secret over the exact bytes sent (`x-flotilla-signature`).
//!
//! Every way the call can go wrong becomes a [`DispatchFailure`], whose blame decides retries in
//! flotilla-core; nothing here panics or hangs past the deadline.

use crate::agent_clients::{AgentClients, ReadError, read_capped, read_prefix, transport_failure};
use flotilla_core::Timestamp;
use flotilla_core::agent_url;
use flotilla_core::id::TenantId;
use flotilla_core::retry::{ConnectReason, DispatchFailure};
use flotilla_core::signature;
use flotilla_core::wire::{ExecuteRequest, ExecuteResponse, contains_nul};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use std::time::Duration;

/// Largest `/execute` answer read; a longer one fails the attempt once this much was read.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// How much of an error answer is kept to quote in the task's error (for its own tenant).
const ERROR_BODY_BYTES: usize = 1024;

/// The instance to call and how to sign for it.
pub struct Target<'a> {
    pub base_url: &'a str,
    /// The instance's signing secret (from its registration).
    pub signing_secret: &'a str,
}

/// Calls the instance of `owner` (`None`: the platform's), signing the request at `now`, and
/// waits at most `timeout`.
pub async fn execute(
    clients: &AgentClients,
    owner: Option<TenantId>,
    target: Target<'_>,
    request: &ExecuteRequest,
    traceparent: Option<&str>,
    now: Timestamp,
    timeout: Duration,
) -> Result<ExecuteResponse, DispatchFailure> {
    let body =
        serde_json::to_vec(request).map_err(|e| DispatchFailure::InvalidResponse(e.to_string()))?;
    let signed = signature::sign(target.signing_secret.as_bytes(), &body, now);
    let signed = HeaderValue::from_str(&signed)
        .map_err(|e| DispatchFailure::InvalidResponse(e.to_string()))?;
    let url = reqwest::Url::parse(target.base_url)
        .ok()
        .and_then(|base| agent_url::endpoint(&base, "execute"))
        .ok_or_else(|| DispatchFailure::Connect {
            reason: ConnectReason::Other,
            detail: format!("`{}` is not a URL with a path", target.base_url),
        })?;
    clients
        .check_host(owner, &url)
        .map_err(DispatchFailure::Refused)?;
    let mut call = clients
        .for_owner(owner)
        .post(url)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(signature::HEADER, signed)
        .body(body)
        .timeout(timeout);
    if let Some(traceparent) = traceparent {
        call = call.header("traceparent", traceparent);
    }
    let mut response = call.send().await.map_err(transport_failure)?;
    let status = response.status();
    if status.is_redirection() {
        return Err(DispatchFailure::Redirect {
            code: status.as_u16(),
        });
    }
    if !status.is_success() {
        let prefix = read_prefix(&mut response, ERROR_BODY_BYTES).await;
        return Err(DispatchFailure::Status {
            code: status.as_u16(),
            body: String::from_utf8_lossy(&prefix).into_owned(),
        });
    }
    let bytes = read_capped(&mut response, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge { limit } => DispatchFailure::TooLarge {
                limit: limit as u64,
            },
            ReadError::Transport(e) => transport_failure(e),
        })?;
    let answer: ExecuteResponse = serde_json::from_slice(&bytes)
        .map_err(|e| DispatchFailure::InvalidResponse(e.to_string()))?;
    let nul_in_usage = answer
        .usage
        .iter()
        .flatten()
        .any(|u| u.model.contains('\0'));
    if contains_nul(&answer.output) || nul_in_usage {
        return Err(DispatchFailure::InvalidResponse(
            "the output contains the character U+0000".to_owned(),
        ));
    }
    Ok(answer)
}
