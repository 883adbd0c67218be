//! Any OpenAI-compatible chat-completions API (OpenAI, Azure OpenAI's v1 endpoint, vLLM, Ollama,
//! LiteLLM, …): `POST {base_url}/chat/completions`.
//!
//! One `reqwest` client per provider keeps a pool of keep-alive connections with `TCP_NODELAY`
//! (docs/design.md §7) and speaks HTTP/2 where the server offers it over TLS (ALPN), HTTP/1.1
//! otherwise. The body goes out as the bytes the gateway was given.

use super::{ChunkStream, UpstreamError, UpstreamReply, UpstreamRequest};
use axum::body::Bytes;
use flotilla_core::config::Provider;
use flotilla_core::model::UpstreamFailure;
use flotilla_core::usage::TokenUsage;
use futures::StreamExt;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use tokio::time::Instant;

/// Most of an error answer read to build the message.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

pub(crate) struct OpenAi {
    client: reqwest::Client,
    /// `{base_url}/chat/completions` and `{base_url}/models`, parsed once (not at every call).
    completions: reqwest::Url,
    models: reqwest::Url,
    name: String,
    first_token_timeout: Duration,
    timeout: Duration,
}

impl OpenAi {
    pub(crate) fn new(provider: &Provider, base_url: &str) -> Result<OpenAi, String> {
        let client = crate::outbound::client_builder()
            .tcp_nodelay(true)
            .connect_timeout(provider.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| format!("cannot build its HTTP client: {e}"))?;
        Ok(OpenAi {
            client,
            completions: parse_url(&format!("{base_url}/chat/completions"))?,
            models: parse_url(&format!("{base_url}/models"))?,
            name: provider.name.clone(),
            first_token_timeout: provider.first_token_timeout,
            timeout: provider.timeout,
        })
    }

    pub(crate) async fn call(
        &self,
        request: &UpstreamRequest,
        api_key: Option<&SecretString>,
    ) -> Result<UpstreamReply, UpstreamError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut builder = self
            .client
            .post(self.completions.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(request.body.clone());
        if let Some(key) = api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
                .map_err(|_| UpstreamError {
                    failure: UpstreamFailure::Status(401),
                    message: format!(
                        "provider `{}`: the API key has characters a header cannot carry",
                        self.name
                    ),
                })?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        if let Some(tp) = &request.traceparent {
            builder = builder.header("traceparent", tp.as_str());
        }
        let first = self.first_token_timeout.min(self.timeout);
        let response = match tokio::time::timeout(first, builder.send()).await {
            Err(_) => {
                return Err(UpstreamError::timeout(format!(
                    "provider `{}` sent nothing within {} ms",
                    self.name,
                    first.as_millis()
                )));
            }
            Ok(Err(e)) => return Err(self.transport(&e)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if !status.is_success() {
            let body = read_limited(response, ERROR_BODY_LIMIT, deadline).await;
            return Err(UpstreamError {
                failure: UpstreamFailure::Status(status.as_u16()),
                message: format!(
                    "provider `{}` answered {}: {}",
                    self.name,
                    status.as_u16(),
                    upstream_message(&body)
                ),
            });
        }
        if request.stream {
            return Ok(UpstreamReply::Stream(
                self.chunks(response, started, deadline),
            ));
        }
        let body = match tokio::time::timeout_at(deadline, response.bytes()).await {
            Err(_) => {
                return Err(UpstreamError::timeout(format!(
                    "provider `{}` did not finish its answer within {} ms",
                    self.name,
                    self.timeout.as_millis()
                )));
            }
            Ok(Err(e)) => return Err(self.transport(&e)),
            Ok(Ok(b)) => b,
        };
        let usage = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("usage").and_then(TokenUsage::from_openai));
        Ok(UpstreamReply::Complete { body, usage })
    }

    /// The answer's bytes as they arrive, cut off at the first-token and total deadlines.
    fn chunks(
        &self,
        response: reqwest::Response,
        started: Instant,
        deadline: Instant,
    ) -> ChunkStream {
        let name = self.name.clone();
        let first_deadline = (started + self.first_token_timeout).min(deadline);
        let stream = response.bytes_stream();
        futures::stream::unfold((stream, true, false), move |(mut stream, first, done)| {
            let name = name.clone();
            async move {
                if done {
                    return None;
                }
                let until = if first { first_deadline } else { deadline };
                match tokio::time::timeout_at(until, stream.next()).await {
                    Err(_) => Some((
                        Err(UpstreamError::timeout(if first {
                            format!("provider `{name}` sent no token in time")
                        } else {
                            format!("provider `{name}` did not finish its stream in time")
                        })),
                        (stream, false, true),
                    )),
                    Ok(None) => None,
                    Ok(Some(Err(e))) => Some((
                        Err(UpstreamError::connection(format!(
                            "provider `{name}`'s stream broke: {e}"
                        ))),
                        (stream, false, true),
                    )),
                    Ok(Some(Ok(bytes))) => Some((Ok(bytes), (stream, false, false))),
                }
            }
        })
        .boxed()
    }

    /// Checks that the provider answers and takes the key: `GET {base_url}/models`, which
    /// OpenAI-compatible APIs serve. Returns what was seen.
    pub(crate) async fn probe(
        &self,
        api_key: Option<&SecretString>,
        timeout: Duration,
    ) -> Result<String, String> {
        let mut request = self.client.get(self.models.clone()).timeout(timeout);
        if let Some(key) = api_key {
            request = request.bearer_auth(key.expose_secret());
        }
        let started = Instant::now();
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                Ok(format!("answered in {} ms", started.elapsed().as_millis()))
            }
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                Err(format!("refused the API key ({})", r.status().as_u16()))
            }
            // Some compatible servers have no model list; any other answer shows they are up.
            Ok(r) if r.status().as_u16() == 404 => Ok(format!(
                "answered in {} ms (no model list)",
                started.elapsed().as_millis()
            )),
            Ok(r) => Err(format!("answered {}", r.status().as_u16())),
            Err(e) => Err(self.transport(&e).message),
        }
    }

    fn transport(&self, e: &reqwest::Error) -> UpstreamError {
        if e.is_timeout() {
            UpstreamError::timeout(format!("provider `{}` timed out: {e}", self.name))
        } else {
            UpstreamError::connection(format!(
                "provider `{}` could not be reached: {}",
                self.name,
                crate::outbound::error_chain(e)
            ))
        }
    }
}

/// A URL of the provider (the configuration checked the scheme; this refuses a malformed host).
fn parse_url(text: &str) -> Result<reqwest::Url, String> {
    reqwest::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))
}

/// Reads at most `limit` bytes of an answer before `deadline`.
async fn read_limited(response: reqwest::Response, limit: usize, deadline: Instant) -> Bytes {
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while out.len() < limit {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => out.extend_from_slice(&chunk),
            _ => break,
        }
    }
    out.truncate(limit);
    Bytes::from(out)
}

/// The upstream's own error message (`error.message` in OpenAI's shape), or its text.
pub(crate) fn upstream_message(body: &[u8]) -> String {
    let parsed = serde_json::from_slice::<serde_json::Value>(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .or_else(|| v.get("error"))
        })
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let clean: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect();
    if clean.trim().is_empty() {
        "(no message)".to_owned()
    } else {
        clean
    }
}
