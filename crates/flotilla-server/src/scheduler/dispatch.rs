//! One attempt: `POST {instance}/execute` with the §6 envelope and a deadline, signed with the
//! instance's secret over the exact bytes sent (`x-flotilla-signature`).
//!
//! Every way the call can go wrong becomes a [`DispatchFailure`], whose blame decides retries in
//! flotilla-core; nothing here panics or hangs past the deadline.

use crate::tls::{self, TlsError};
use flotilla_core::Timestamp;
use flotilla_core::config::AgentsTls;
use flotilla_core::retry::DispatchFailure;
use flotilla_core::signature;
use flotilla_core::wire::{ExecuteRequest, ExecuteResponse, contains_nul};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use std::time::Duration;

/// Largest agent answer read; a bigger one fails the attempt.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// The HTTP client for agents (dispatch and health checks): pooled keep-alive connections with
/// `TCP_NODELAY` (DESIGN.md §7). With `[agents_tls]`, `https` agent URLs are verified against
/// its CA only and the control plane presents its client certificate when one is configured;
/// without it, only plain `http` agents can be reached (no CA is trusted).
pub fn http_client(agents_tls: Option<&AgentsTls>) -> Result<reqwest::Client, AgentClientError> {
    let mut builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .connect_timeout(Duration::from_secs(5))
        .no_proxy();
    if let Some(agents_tls) = agents_tls {
        builder = builder.use_preconfigured_tls(client_config(agents_tls)?);
    }
    builder.build().map_err(AgentClientError::Build)
}

/// Why the HTTP client for agents could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// A file of `[agents_tls]` is missing or unusable.
    #[error("agents_tls: {0}")]
    Tls(#[from] TlsError),
    /// reqwest refused the settings.
    #[error("cannot build the HTTP client for agents: {0}")]
    Build(#[source] reqwest::Error),
}

/// The rustls configuration of `[agents_tls]`, with the ring provider chosen explicitly.
fn client_config(agents_tls: &AgentsTls) -> Result<rustls::ClientConfig, TlsError> {
    let roots = tls::load_roots(&agents_tls.ca_file)?;
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            file: agents_tls.ca_file.display().to_string(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots);
    let mut config = match &agents_tls.client {
        Some(client) => builder
            .with_client_auth_cert(
                tls::load_certs(&client.cert_file)?,
                tls::load_key(&client.key_file)?,
            )
            .map_err(|e| TlsError {
                file: client.key_file.display().to_string(),
                message: e.to_string(),
            })?,
        None => builder.with_no_client_auth(),
    };
    // The agent SDK serves HTTP/1.1; saying so keeps every agent on one protocol.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The instance to call and how to sign for it.
pub struct Target<'a> {
    pub base_url: &'a str,
    /// The instance's signing secret (from its registration).
    pub signing_secret: &'a str,
}

/// Calls the instance, signing the request at `now`, and waits at most `timeout`.
pub async fn execute(
    http: &reqwest::Client,
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
    let mut call = http
        .post(format!("{}/execute", target.base_url.trim_end_matches('/')))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(signature::HEADER, signed)
        .body(body)
        .timeout(timeout);
    if let Some(traceparent) = traceparent {
        call = call.header("traceparent", traceparent);
    }
    let response = call.send().await.map_err(transport_failure)?;
    let status = response.status();
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(DispatchFailure::InvalidResponse(format!(
            "answer larger than {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    let bytes = response.bytes().await.map_err(transport_failure)?;
    if !status.is_success() {
        return Err(DispatchFailure::Status {
            code: status.as_u16(),
            body: String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]).into_owned(),
        });
    }
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(DispatchFailure::InvalidResponse(format!(
            "answer larger than {MAX_RESPONSE_BYTES} bytes"
        )));
    }
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

fn transport_failure(e: reqwest::Error) -> DispatchFailure {
    if e.is_timeout() {
        return DispatchFailure::Timeout;
    }
    // reqwest's own message is generic; the cause chain says what happened.
    let mut message = e.to_string();
    let mut tls = false;
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        tls |= is_tls(cause);
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if tls {
        // Say so plainly: a certificate problem is fixed in configuration, not by waiting.
        message.insert_str(0, "TLS: ");
    }
    DispatchFailure::Connect(message)
}

/// True for a rustls error, also when wrapped in `io::Error`s (whose `source()` skips what they
/// wrap; the connector wraps the handshake's error twice).
fn is_tls(cause: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = cause;
    loop {
        if cause.is::<rustls::Error>() {
            return true;
        }
        match cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => cause = inner,
            None => return false,
        }
    }
}
