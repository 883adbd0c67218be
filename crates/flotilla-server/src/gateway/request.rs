//! A chat-completions request as the gateway reads it: validated just enough to route, budget and
//! refuse bad input with a clear 400 (`model`, `messages`, `stream`, token maximums, `n`), and
//! otherwise passed on untouched — fields the gateway does not know (tools, response formats,
//! provider extensions) reach the provider as the client wrote them.

use super::error::GatewayError;
use axum::body::Bytes;
use serde_json::{Map, Value};

/// Roles a message may have.
const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// A validated request.
#[derive(Clone, Debug)]
pub(crate) struct ChatRequest {
    pub body: Map<String, Value>,
    /// The bytes the client sent.
    pub raw: Bytes,
    pub model: String,
    pub stream: bool,
    /// `max_completion_tokens` or `max_tokens`, when set.
    pub max_output_tokens: Option<u64>,
    /// Choices asked for (`n`).
    pub choices: u64,
    /// Prompt tokens as estimated from the messages' text.
    pub input_tokens: u64,
    /// The most prompt tokens the request can count ([`input_token_bound`]): what budgets
    /// reserve.
    pub input_bound: u64,
}

/// Prompt tokens an image part may count at most, beyond its bytes: OpenAI's largest
/// high-detail image on GPT-4o (a 768 × 2048 fit, 12 tiles: 85 + 12 × 170). Providers that count
/// an image dearer can overshoot a reservation; the overshoot is reported (docs/api.md, "Budgets").
pub(crate) const IMAGE_INPUT_TOKENS: u64 = 2_125;

/// The most prompt tokens a body of `bytes` bytes with `images` image parts can count. A
/// tokenizer's token covers at least one byte of text, so no text — messages, tools, schemas —
/// counts more tokens than its bytes; the body's bytes include all of it.
pub(crate) fn input_token_bound(bytes: usize, images: u64) -> u64 {
    (bytes as u64).saturating_add(images.saturating_mul(IMAGE_INPUT_TOKENS))
}

/// Image parts (`{"type": "image_url"}`) among `messages`' content.
fn image_parts(messages: &[Value]) -> u64 {
    messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
        .count() as u64
}

impl ChatRequest {
    pub(crate) fn parse(raw: Bytes) -> Result<ChatRequest, GatewayError> {
        let value: Value = serde_json::from_slice(&raw).map_err(|e| {
            GatewayError::invalid("body", format!("the body is not valid JSON: {e}"))
        })?;
        let Value::Object(body) = value else {
            return Err(GatewayError::invalid(
                "body",
                "the body must be a JSON object",
            ));
        };
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
            Some(Value::String(_)) | None => {
                return Err(GatewayError::invalid(
                    "model",
                    "`model` is required: name a model from GET /v1/models, or `auto`",
                ));
            }
            Some(_) => return Err(GatewayError::invalid("model", "`model` must be a string")),
        };
        let messages = match body.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => m,
            Some(Value::Array(_)) => {
                return Err(GatewayError::invalid(
                    "messages",
                    "`messages` must hold at least one message",
                ));
            }
            _ => {
                return Err(GatewayError::invalid(
                    "messages",
                    "`messages` is required: an array of {role, content} objects",
                ));
            }
        };
        for (i, m) in messages.iter().enumerate() {
            check_message(i, m)?;
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(GatewayError::invalid(
                    "stream",
                    "`stream` must be a boolean",
                ));
            }
        };
        let mut max_output_tokens = None;
        for field in ["max_tokens", "max_completion_tokens"] {
            match body.get(field) {
                None | Some(Value::Null) => {}
                Some(v) => match v.as_u64() {
                    Some(n) if n >= 1 => {
                        max_output_tokens = Some(max_output_tokens.map_or(n, |m: u64| m.min(n)));
                    }
                    _ => {
                        return Err(GatewayError::invalid(
                            field,
                            format!("`{field}` must be a whole number of at least 1"),
                        ));
                    }
                },
            }
        }
        let choices = match body.get("n") {
            None | Some(Value::Null) => 1,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=128) => n,
                _ => return Err(GatewayError::invalid("n", "`n` must be between 1 and 128")),
            },
        };
        let input_tokens = estimate_input_tokens_of(messages);
        let input_bound = input_token_bound(raw.len(), image_parts(messages));
        Ok(ChatRequest {
            body,
            raw,
            model,
            stream,
            max_output_tokens,
            choices,
            input_tokens,
            input_bound,
        })
    }

    /// The body for the provider: `model` set to `upstream`, and for streams
    /// `stream_options.include_usage` so that the last chunk carries the usage. The client's
    /// own bytes when nothing needs to change.
    pub(crate) fn upstream_body(&self, upstream: &str) -> Bytes {
        let wants_usage = self.stream
            && self
                .body
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                != Some(true);
        if self.model == upstream && !wants_usage {
            return self.raw.clone();
        }
        let mut body = self.body.clone();
        body.insert("model".to_owned(), Value::String(upstream.to_owned()));
        if wants_usage {
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(o) = options {
                o.insert("include_usage".to_owned(), Value::Bool(true));
            } else {
                *options = serde_json::json!({"include_usage": true});
            }
        }
        Bytes::from(Value::Object(body).to_string())
    }

    /// True when the client itself asked for usage in the stream's last chunk (otherwise the
    /// gateway asked for it and keeps that chunk to itself).
    pub(crate) fn client_wants_stream_usage(&self) -> bool {
        self.body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true)
    }
}

fn check_message(i: usize, m: &Value) -> Result<(), GatewayError> {
    let field = |name: &str| format!("messages[{i}].{name}");
    let Value::Object(m) = m else {
        return Err(GatewayError::invalid(
            &format!("messages[{i}]"),
            "each message must be an object with `role` and `content`",
        ));
    };
    match m.get("role").and_then(Value::as_str) {
        Some(r) if ROLES.contains(&r) => {}
        Some(r) => {
            return Err(GatewayError::invalid(
                &field("role"),
                format!("`{r}` is not a role: use one of {}", ROLES.join(", ")),
            ));
        }
        None => {
            return Err(GatewayError::invalid(
                &field("role"),
                "each message needs a `role` string",
            ));
        }
    }
    match m.get("content") {
        Some(Value::String(_) | Value::Array(_)) => Ok(()),
        // An assistant message that only calls tools has no content.
        Some(Value::Null) | None
            if m.contains_key("tool_calls") || m.contains_key("function_call") =>
        {
            Ok(())
        }
        _ => Err(GatewayError::invalid(
            &field("content"),
            "each message needs `content`: a string or an array of content parts",
        )),
    }
}

/// Prompt tokens estimated from a request body's messages (the simulated provider counts the same
/// way, so its calls are reserved exactly).
pub(crate) fn estimate_input_tokens(body: &Value) -> u64 {
    body.get("messages")
        .and_then(Value::as_array)
        .map_or(0, |m| estimate_input_tokens_of(m))
}

/// About one token per four bytes of text, plus a few per message for the role and framing —
/// the rule of thumb of OpenAI's tokenizer documentation. It sizes tokens-per-minute
/// reservations and the estimated usage of streams whose provider reports none; budgets reserve
/// by [`input_token_bound`] instead.
fn estimate_input_tokens_of(messages: &[Value]) -> u64 {
    let mut bytes: u64 = 0;
    for m in messages {
        bytes += 16;
        match m.get("content") {
            Some(Value::String(s)) => bytes += s.len() as u64,
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        bytes += t.len() as u64;
                    }
                }
            }
            _ => {}
        }
    }
    bytes.div_ceil(4) + 3
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ChatRequest, GatewayError> {
        ChatRequest::parse(Bytes::from(text.to_owned()))
    }

    #[test]
    fn the_input_bound_covers_every_byte_and_each_image() {
        let text = r#"{"model": "m", "messages": [{"role": "user", "content": "日本語のテキスト"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}"#;
        let r = parse(text).unwrap();
        assert_eq!(r.input_bound, text.len() as u64);
        assert!(
            r.input_bound > r.input_tokens * 3,
            "non-Latin text and tools count whole"
        );
        let image = r#"{"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}}]}]}"#;
        let r = parse(image).unwrap();
        assert_eq!(r.input_bound, image.len() as u64 + 2 * IMAGE_INPUT_TOKENS);
    }

    #[test]
    fn bad_requests_name_the_field() {
        for (body, param) in [
            ("[1]", "body"),
            ("{", "body"),
            (r#"{"messages":[{"role":"user","content":"hi"}]}"#, "model"),
            (r#"{"model":"m"}"#, "messages"),
            (r#"{"model":"m","messages":[]}"#, "messages"),
            (
                r#"{"model":"m","messages":[{"role":"boss","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "stream",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":0}"#,
                "n",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
            assert_eq!(e.status, 400);
        }
    }

    #[test]
    fn the_body_is_passed_on_untouched_unless_something_must_change() {
        let raw = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[]}"#;
        let r = parse(raw).unwrap();
        assert_eq!(r.upstream_body("m"), raw.as_bytes());
        let changed: Value = serde_json::from_slice(&r.upstream_body("up")).unwrap();
        assert_eq!(changed["model"], "up");
        assert_eq!(changed["tools"], serde_json::json!([]));
        let s = parse(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
            .unwrap();
        let v: Value = serde_json::from_slice(&s.upstream_body("m")).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(!s.client_wants_stream_usage());
    }
}
