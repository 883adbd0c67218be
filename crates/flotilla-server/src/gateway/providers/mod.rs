//! Upstream model providers: any OpenAI-compatible HTTP API ([`openai`]) and the built-in
//! simulated provider ([`simulated`]). Both take the request body as the client sent it (with the
//! upstream model name put in) and give back either a whole JSON answer or a stream of raw
//! server-sent-event bytes, which the gateway relays as they come.

pub(crate) mod openai;
pub(crate) mod simulated;

use axum::body::Bytes;
use flotilla_core::config::{Provider, ProviderKind};
use flotilla_core::model::UpstreamFailure;
use flotilla_core::usage::TokenUsage;
use futures::stream::BoxStream;
use secrecy::SecretString;
use std::time::Duration;

/// One call as it goes upstream.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamRequest {
    /// The JSON body to send, `model` already set to the upstream name.
    pub body: Bytes,
    pub stream: bool,
    /// W3C trace context of the gateway call, passed on to the provider.
    pub traceparent: Option<String>,
}

/// Raw bytes of a server-sent-event stream, in whatever pieces the provider sent them.
pub(crate) type ChunkStream = BoxStream<'static, Result<Bytes, UpstreamError>>;

/// What the provider answered.
pub(crate) enum UpstreamReply {
    /// A whole (non-streamed) JSON answer with its usage, when it reported one.
    Complete {
        body: Bytes,
        usage: Option<TokenUsage>,
    },
    /// A stream of server-sent events.
    Stream(ChunkStream),
}

/// A failed call: what kind of failure (which decides retries and fallbacks) and why.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct UpstreamError {
    pub failure: UpstreamFailure,
    pub message: String,
}

impl UpstreamError {
    pub(crate) fn timeout(message: impl Into<String>) -> UpstreamError {
        UpstreamError {
            failure: UpstreamFailure::Timeout,
            message: message.into(),
        }
    }

    pub(crate) fn connection(message: impl Into<String>) -> UpstreamError {
        UpstreamError {
            failure: UpstreamFailure::Connection,
            message: message.into(),
        }
    }
}

/// A configured provider, ready to call.
pub(crate) enum ProviderClient {
    OpenAi(Box<openai::OpenAi>),
    Simulated(simulated::Simulated),
}

impl ProviderClient {
    /// Builds the client of a provider (one connection pool per provider, reused by every call).
    pub(crate) fn new(provider: &Provider) -> Result<ProviderClient, String> {
        Ok(match &provider.kind {
            ProviderKind::OpenAi { base_url, .. } => {
                ProviderClient::OpenAi(Box::new(openai::OpenAi::new(provider, base_url)?))
            }
            ProviderKind::Simulated {
                latency,
                tokens_per_second,
            } => ProviderClient::Simulated(simulated::Simulated {
                latency: *latency,
                token_interval: (*tokens_per_second > 0)
                    .then(|| Duration::from_secs(1) / *tokens_per_second),
            }),
        })
    }

    /// Checks the provider answers and takes its key (see [`openai::OpenAi::probe`]).
    pub(crate) async fn probe(
        &self,
        api_key: Option<&SecretString>,
        timeout: Duration,
    ) -> Result<String, String> {
        match self {
            ProviderClient::OpenAi(p) => p.probe(api_key, timeout).await,
            ProviderClient::Simulated(_) => Ok("built-in simulated provider".to_owned()),
        }
    }

    /// Makes one attempt.
    pub(crate) async fn call(
        &self,
        request: &UpstreamRequest,
        api_key: Option<&SecretString>,
    ) -> Result<UpstreamReply, UpstreamError> {
        match self {
            ProviderClient::OpenAi(p) => p.call(request, api_key).await,
            ProviderClient::Simulated(p) => p.call(request).await,
        }
    }
}
