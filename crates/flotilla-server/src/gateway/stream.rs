//! Relays a provider's server-sent events to the client event by event, as they arrive — never
//! buffering the whole answer — while watching them for the usage the provider reports in its
//! last chunk. When the stream ends (completely, broken, or because the client went away), the
//! gateway learns what was used and records it: a stream is never recorded as costing nothing.
//!
//! The parser is a few lines rather than a crate such as `eventsource-stream` because the relay
//! must forward each event's exact bytes, which such crates do not keep.

use super::error::GatewayError;
use super::providers::ChunkStream;
use axum::body::{Body, Bytes};
use flotilla_core::usage::TokenUsage;
use futures::StreamExt;
use std::convert::Infallible;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// Longest event accepted; a provider that sends more without an event boundary is broken.
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// How a relayed stream ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StreamOutcome {
    /// Usage from the provider's last chunk, when it sent one.
    pub usage: Option<TokenUsage>,
    /// Chunks that carried generated content (an estimate of output tokens when `usage` is
    /// missing: providers send about one token per chunk).
    pub content_chunks: u64,
    /// Why the stream broke, when it did (the client got an error event).
    pub error: Option<String>,
    /// The client disconnected before the end.
    pub cancelled: bool,
}

/// Starts relaying `upstream`; returns the response body. `hide_usage_chunk`: the gateway asked
/// for the usage chunk itself, so it is not forwarded. `on_end` runs once, when the stream is
/// over.
pub(crate) fn relay<F, Fut>(
    upstream: ChunkStream,
    hide_usage_chunk: bool,
    tracker: &TaskTracker,
    on_end: F,
) -> Body
where
    F: FnOnce(StreamOutcome) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (tx, mut rx) = mpsc::channel::<Bytes>(32);
    tracker.spawn(async move {
        let outcome = pump(upstream, hide_usage_chunk, &tx).await;
        on_end(outcome).await;
    });
    let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, Infallible>);
    Body::from_stream(body)
}

async fn pump(
    mut upstream: ChunkStream,
    hide_usage_chunk: bool,
    tx: &mpsc::Sender<Bytes>,
) -> StreamOutcome {
    let mut outcome = StreamOutcome::default();
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let next = tokio::select! {
            next = upstream.next() => next,
            () = tx.closed() => {
                outcome.cancelled = true;
                return outcome;
            }
        };
        match next {
            None => {
                if !buffer.iter().all(u8::is_ascii_whitespace) {
                    fail(
                        &mut outcome,
                        tx,
                        "the provider's stream ended in the middle of an event",
                    )
                    .await;
                }
                return outcome;
            }
            Some(Err(e)) => {
                fail(&mut outcome, tx, &e.message).await;
                return outcome;
            }
            Some(Ok(bytes)) => {
                buffer.extend_from_slice(&bytes);
                let mut out: Vec<u8> = Vec::new();
                while let Some((end, sep)) = boundary(&buffer) {
                    let event: Vec<u8> = buffer.drain(..end + sep).collect();
                    match inspect(&event[..end], &mut outcome) {
                        Ok(Seen::Forward) => out.extend_from_slice(&event),
                        Ok(Seen::UsageOnly) if hide_usage_chunk => {}
                        Ok(Seen::UsageOnly) => out.extend_from_slice(&event),
                        Err(message) => {
                            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                                outcome.cancelled = true;
                                return outcome;
                            }
                            fail(&mut outcome, tx, &message).await;
                            return outcome;
                        }
                    }
                }
                if buffer.len() > MAX_EVENT_BYTES {
                    fail(&mut outcome, tx, "the provider sent an event over 1 MiB").await;
                    return outcome;
                }
                if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                    outcome.cancelled = true;
                    return outcome;
                }
            }
        }
    }
}

/// The end of the first complete event in `buffer` and the length of its separator.
fn boundary(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

enum Seen {
    Forward,
    /// A chunk with usage and no choices: the answer to `include_usage`.
    UsageOnly,
}

/// Reads one event's `data:` lines; an error message when the event is malformed.
fn inspect(event: &[u8], outcome: &mut StreamOutcome) -> Result<Seen, String> {
    let text = std::str::from_utf8(event)
        .map_err(|_| "the provider sent an event that is not UTF-8".to_owned())?;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    let data = data.trim();
    if data.is_empty() || data == "[DONE]" {
        return Ok(Seen::Forward);
    }
    let value: serde_json::Value = serde_json::from_str(data)
        .map_err(|e| format!("the provider sent an event whose data is not JSON: {e}"))?;
    if let Some(error) = value.get("error") {
        outcome.error = Some(super::providers::openai::upstream_message(
            error.to_string().as_bytes(),
        ));
        return Ok(Seen::Forward);
    }
    let choices = value.get("choices").and_then(serde_json::Value::as_array);
    if choices.is_some_and(|c| {
        c.iter().any(|choice| {
            choice
                .pointer("/delta/content")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|s| !s.is_empty())
                || choice.pointer("/delta/tool_calls").is_some()
        })
    }) {
        outcome.content_chunks += 1;
    }
    if let Some(usage) = value
        .get("usage")
        .filter(|u| !u.is_null())
        .and_then(TokenUsage::from_openai)
    {
        outcome.usage = Some(usage);
        if choices.is_none_or(Vec::is_empty) {
            return Ok(Seen::UsageOnly);
        }
    }
    Ok(Seen::Forward)
}

/// Ends the client's stream with an OpenAI-shaped error event.
async fn fail(outcome: &mut StreamOutcome, tx: &mpsc::Sender<Bytes>, message: &str) {
    outcome.error = Some(message.to_owned());
    let error = GatewayError::upstream(message.to_owned());
    let event = format!("data: {}\n\n", error.body());
    if tx.send(Bytes::from(event)).await.is_err() {
        outcome.cancelled = true;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::gateway::providers::UpstreamError;

    async fn run(
        chunks: Vec<Result<&'static str, UpstreamError>>,
        hide: bool,
    ) -> (String, StreamOutcome) {
        let upstream: ChunkStream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| c.map(|s| Bytes::from_static(s.as_bytes()))),
        )
        .boxed();
        let tracker = TaskTracker::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let body = relay(upstream, hide, &tracker, move |o| async move {
            let _ = done_tx.send(o);
        });
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (
            String::from_utf8(bytes.to_vec()).unwrap(),
            done_rx.await.unwrap(),
        )
    }

    #[tokio::test]
    async fn events_split_across_chunks_are_relayed_whole_and_usage_is_read() {
        let (text, outcome) = run(
            vec![
                Ok("data: {\"choices\":[{\"delta\":{\"content\":\"Hel"),
                Ok("lo\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n"),
                Ok("data: [DONE]\n\n"),
            ],
            true,
        )
        .await;
        assert_eq!(
            text,
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\ndata: [DONE]\n\n"
        );
        assert_eq!(outcome.usage.unwrap().input_tokens, 3);
        assert_eq!(outcome.content_chunks, 1);
        assert_eq!(outcome.error, None);
    }

    #[tokio::test]
    async fn malformed_events_end_the_stream_with_an_error_event_keeping_what_came_before() {
        let (text, outcome) = run(
            vec![
                Ok("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"),
                Ok("data: {not json\n\n"),
                Ok("data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n"),
            ],
            false,
        )
        .await;
        assert!(text.starts_with("data: {\"choices\""), "{text}");
        assert!(text.contains("\"type\":\"api_error\""), "{text}");
        assert!(!text.contains("\"b\""), "{text}");
        assert_eq!(outcome.content_chunks, 1);
        assert!(outcome.error.unwrap().contains("not JSON"));
    }

    #[tokio::test]
    async fn a_broken_connection_ends_with_an_error_event() {
        let (text, outcome) = run(
            vec![
                Ok("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"),
                Err(UpstreamError::connection("reset")),
            ],
            false,
        )
        .await;
        assert!(text.ends_with("\n\n") && text.contains("reset"), "{text}");
        assert_eq!(outcome.error.as_deref(), Some("reset"));
    }
}
