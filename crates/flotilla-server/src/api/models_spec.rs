//! How `/openapi.json` describes the model gateway's routes. These types only document the wire
//! format the gateway reads and answers (OpenAI's chat-completions shape, validated by
//! [`crate::gateway::request::ChatRequest::parse`]); the handlers read the body themselves so that fields
//! the gateway does not know reach the provider untouched.
#![allow(dead_code)]

use serde_json::Value;
use utoipa::ToSchema;

/// A chat-completions request. Fields not listed here (tools, response formats, provider
/// extensions) are passed on to the provider as written.
#[derive(ToSchema)]
pub(super) struct ChatCompletionRequest {
    /// A model of `GET /v1/models`, or `auto`.
    #[schema(min_length = 1, pattern = r"\S")]
    pub model: String,
    /// The conversation; at least one message.
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    /// Answer as server-sent events.
    pub stream: Option<bool>,
    /// Most output tokens (the smaller of this and `max_completion_tokens` counts).
    #[schema(minimum = 1, maximum = 18446744073709551615_u64)]
    pub max_tokens: Option<u64>,
    /// Most output tokens.
    #[schema(minimum = 1, maximum = 18446744073709551615_u64)]
    pub max_completion_tokens: Option<u64>,
    /// Choices to generate.
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<u64>,
}

/// One server-sent event of a streamed answer: `data` holds a chunk as JSON text, or `[DONE]`.
#[derive(ToSchema)]
pub(super) struct ServerSentEvent {
    pub data: String,
    pub event: Option<String>,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

/// One message of a conversation.
#[derive(ToSchema)]
pub(super) struct ChatMessage {
    pub role: ChatRole,
    /// A string, or an array of content parts.
    #[schema(schema_with = chat_content)]
    pub content: Value,
}

/// The text of a message (a string), or its parts (an array); what
/// [`crate::gateway::request::ChatRequest::parse`] accepts. A message with `tool_calls` or
/// `function_call` may also leave it out or send `null`, which this schema does not state.
fn chat_content() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ArrayBuilder::new().items(ObjectBuilder::new()))
        .description(Some("A string, or an array of content parts."))
        .into()
}

/// Who wrote a message.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(super) enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

/// A chat completion as the provider answered it (OpenAI's shape; with `stream`, a stream of
/// `chat.completion.chunk` events instead).
#[derive(ToSchema)]
pub(super) struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub model: String,
    pub choices: Vec<Value>,
    pub usage: Option<Value>,
}

/// The configured models in OpenAI's list shape; each entry also carries Flotilla's details
/// under `flotilla`.
#[derive(ToSchema)]
pub(super) struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ModelEntry>,
}

/// One configured model.
#[derive(ToSchema)]
pub(super) struct ModelEntry {
    pub id: String,
    /// Always `model`.
    pub object: String,
    pub owned_by: String,
    /// Provider, upstream name, prices, quality, speed, fallbacks and downgrade target.
    #[schema(value_type = Object)]
    pub flotilla: Value,
}

/// An error of the gateway, in OpenAI's shape so that OpenAI SDKs raise their usual exceptions.
#[derive(ToSchema)]
pub(super) struct OpenAiErrorBody {
    pub error: OpenAiError,
}

/// What went wrong.
#[derive(ToSchema)]
pub(super) struct OpenAiError {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`, `not_found_error`,
    /// `rate_limit_error`, `insufficient_quota`, `api_error` or `timeout_error`.
    #[schema(rename = "type")]
    pub kind: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A snake_case code, as in Flotilla's own errors.
    pub code: Option<String>,
    /// The request's id (also in the `x-request-id` header).
    pub request_id: Option<String>,
}
