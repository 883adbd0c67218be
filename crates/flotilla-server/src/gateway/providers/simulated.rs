//! The built-in simulated provider, for demos and tests: no network, deterministic answers whose
//! text and `system_fingerprint` say they are simulated, and token counts computed from the
//! request (prompt tokens as the gateway estimates them, 16–47 output tokens depending on the
//! prompt, capped by `max_tokens`). Latency to the first token and streaming speed are set in
//! `[providers.simulated]`.

use super::{ChunkStream, UpstreamError, UpstreamReply, UpstreamRequest};
use crate::gateway::request::estimate_input_tokens;
use axum::body::Bytes;
use flotilla_core::model::UpstreamFailure;
use flotilla_core::usage::TokenUsage;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Marks every simulated answer.
pub(crate) const FINGERPRINT: &str = "flotilla-simulated";

const WORDS: [&str; 12] = [
    "This",
    "answer",
    "comes",
    "from",
    "Flotilla's",
    "simulated",
    "provider;",
    "no",
    "real",
    "model",
    "was",
    "called.",
];

pub(crate) struct Simulated {
    pub latency: Duration,
    /// Time between streamed tokens; `None`: all at once.
    pub token_interval: Option<Duration>,
}

impl Simulated {
    pub(crate) async fn call(
        &self,
        request: &UpstreamRequest,
    ) -> Result<UpstreamReply, UpstreamError> {
        let body: Value = serde_json::from_slice(&request.body).map_err(|e| UpstreamError {
            failure: UpstreamFailure::Status(400),
            message: format!("simulated provider: the request is not JSON: {e}"),
        })?;
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("simulated")
            .to_owned();
        let input = estimate_input_tokens(&body);
        let max = body
            .get("max_completion_tokens")
            .or_else(|| body.get("max_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        let natural = 16 + input % 32;
        let output = natural.min(max);
        let finish = if output < natural { "length" } else { "stop" };
        let usage = TokenUsage {
            input_tokens: input,
            output_tokens: output,
            ..TokenUsage::default()
        };
        let words: Vec<&str> = (0..output)
            .map(|i| WORDS[usize::try_from(i).unwrap_or(0) % WORDS.len()])
            .collect();
        let id = format!(
            "chatcmpl-simulated-{:016x}",
            input.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ output
        );
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        tokio::time::sleep(self.latency).await;
        if !request.stream {
            let answer = json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": words.join(" ")},
                             "finish_reason": finish, "logprobs": null}],
                "usage": usage_json(&usage),
            });
            return Ok(UpstreamReply::Complete {
                body: Bytes::from(answer.to_string()),
                usage: Some(usage),
            });
        }
        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let chunk = |delta: Value, finish: Value| {
            event(&json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }))
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        for (i, w) in words.iter().enumerate() {
            let text = if i == 0 {
                (*w).to_owned()
            } else {
                format!(" {w}")
            };
            events.push(chunk(json!({"content": text}), Value::Null));
        }
        events.push(chunk(json!({}), json!(finish)));
        if include_usage {
            events.push(event(&json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": FINGERPRINT, "choices": [], "usage": usage_json(&usage),
            })));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let interval = self.token_interval;
        let stream: ChunkStream = futures::stream::iter(events.into_iter().enumerate())
            .then(move |(i, e)| async move {
                if let (Some(d), true) = (interval, i > 0) {
                    tokio::time::sleep(d).await;
                }
                Ok(e)
            })
            .boxed();
        Ok(UpstreamReply::Stream(stream))
    }
}

fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn usage_json(u: &TokenUsage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total(),
    })
}
