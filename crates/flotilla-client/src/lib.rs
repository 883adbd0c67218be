//! The typed client of Flotilla's API v1, used by the CLI, the agent SDK, `flotilla doctor` and
//! the tests.
//!
//! One [`Client`] holds one pooled `reqwest` client (keep-alive connections, `TCP_NODELAY`, a
//! connect timeout) and is cheap to clone: clones share the pool. Every call returns the shared
//! wire types of `flotilla-core`, so the client cannot drift from the server.
//!
//! This crate only speaks HTTP; it makes no decisions and retries nothing. Callers that need
//! retries (the agent runtime's registration and heartbeats) own their backoff.

mod access;
mod cost;
mod error;
mod secrets;
mod system;
mod tls;

pub use cost::{ListUsage, UsageCsv};
pub use error::ClientError;
pub use flotilla_core::usage::UsagePage;
pub use flotilla_core::wire::ErrorDetail;
pub use tls::TlsOptions;

use flotilla_core::agent::AgentInstance;
use flotilla_core::id::{AgentId, TaskId};
use flotilla_core::task::{Task, TaskStatus};
use flotilla_core::wire::{
    AgentList, Deregistered, EventList, Heartbeat, HeartbeatAck, PoolList, Probe, RegisterAgent,
    Registered, SubmitTask, TaskPage,
};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How long a connection attempt may take before the call fails with a transport error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit on one whole request (a long poll gets its wait added on top).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle keep-alive connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A client of one Flotilla control plane, optionally authenticated with an API key.
///
/// Clones share the connection pool. The key is held only inside a header value marked
/// sensitive and never appears in `Debug` output.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8080`.
    base: Arc<str>,
    authenticated: bool,
    request_timeout: Duration,
}

/// Filters and paging of `GET /v1/tasks`; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListTasks {
    pub status: Option<TaskStatus>,
    pub agent_type: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base)
            .field("authenticated", &self.authenticated)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the control plane at `base_url` (`http://host:port`, optionally with a path
    /// prefix), sending `key` as a bearer token when given.
    pub fn new(base_url: &str, key: Option<String>) -> Result<Client, ClientError> {
        Client::with_tls(base_url, key, &TlsOptions::default())
    }

    /// Like [`Client::new`], trusting the CAs of `tls.ca_file` for `https` URLs and presenting
    /// `tls`'s client certificate to a server that requires one (mutual TLS).
    ///
    /// The client trusts no CA by default (there are no built-in roots), so an `https` control
    /// plane needs `ca_file`. The files are read here; an unreadable or malformed one is a
    /// [`ClientError::Tls`] naming it.
    pub fn with_tls(
        base_url: &str,
        key: Option<String>,
        tls: &TlsOptions,
    ) -> Result<Client, ClientError> {
        let parsed = reqwest::Url::parse(base_url)
            .map_err(|e| ClientError::InvalidUrl(format!("`{base_url}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ClientError::InvalidUrl(format!(
                "`{base_url}`: expected an http:// or https:// URL with a host"
            )));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(ClientError::InvalidUrl(format!(
                "`{base_url}`: the base URL must not carry a query or fragment"
            )));
        }

        let mut headers = HeaderMap::new();
        let authenticated = key.is_some();
        if let Some(key) = key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                ClientError::InvalidKey("the API key contains characters not allowed in a header")
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }

        let builder = tls.apply(reqwest::Client::builder())?;
        let http = builder
            .default_headers(headers)
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(concat!("flotilla-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::Transport)?;

        Ok(Client {
            http,
            base: Arc::from(base_url.trim_end_matches('/')),
            authenticated,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// The same client (sharing its pool) with another limit on each whole request.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Client {
        self.request_timeout = timeout;
        self
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /health`: the process is alive.
    pub async fn health(&self) -> Result<Probe, ClientError> {
        self.call(Method::GET, "/health", NoBody, None).await
    }

    /// `GET /ready`: the store is reachable and migrated. A server that is not ready answers
    /// with a non-2xx status, which is returned as [`ClientError::Api`].
    pub async fn ready(&self) -> Result<Probe, ClientError> {
        self.call(Method::GET, "/ready", NoBody, None).await
    }

    /// `POST /v1/tasks`: submit a task (202 when created, 200 when the idempotency key matched
    /// an earlier one).
    pub async fn submit_task(&self, task: &SubmitTask) -> Result<Task, ClientError> {
        self.call(Method::POST, "/v1/tasks", Json(task), None).await
    }

    /// `GET /v1/tasks/{id}`; with `wait`, long-polls up to that long for a terminal state.
    pub async fn get_task(&self, id: TaskId, wait: Option<Duration>) -> Result<Task, ClientError> {
        let path = format!("/v1/tasks/{id}");
        match wait {
            Some(wait) => {
                let query = [("wait", wait.as_secs_f64().to_string())];
                // The server holds the request for up to `wait`; the limit must outlast it.
                let timeout = wait.saturating_add(self.request_timeout);
                self.call_with(Method::GET, &path, &query, NoBody, Some(timeout))
                    .await
            }
            None => self.call(Method::GET, &path, NoBody, None).await,
        }
    }

    /// `GET /v1/tasks`: one page of tasks, newest first.
    pub async fn list_tasks(&self, filter: &ListTasks) -> Result<TaskPage, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(status) = filter.status {
            query.push(("status", status.as_str().to_owned()));
        }
        if let Some(agent_type) = &filter.agent_type {
            query.push(("agent_type", agent_type.clone()));
        }
        if let Some(cursor) = &filter.cursor {
            query.push(("cursor", cursor.clone()));
        }
        if let Some(limit) = filter.limit {
            query.push(("limit", limit.to_string()));
        }
        self.call_with(Method::GET, "/v1/tasks", &query, NoBody, None)
            .await
    }

    /// `POST /v1/tasks/{id}/cancel`.
    pub async fn cancel_task(&self, id: TaskId) -> Result<Task, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/tasks/{id}/cancel"),
            NoBody,
            None,
        )
        .await
    }

    /// `POST /v1/agents`: register an agent instance.
    pub async fn register_agent(&self, agent: &RegisterAgent) -> Result<Registered, ClientError> {
        self.call(Method::POST, "/v1/agents", Json(agent), None)
            .await
    }

    /// `POST /v1/agents/{id}/heartbeat`.
    pub async fn heartbeat(
        &self,
        id: AgentId,
        beat: &Heartbeat,
    ) -> Result<HeartbeatAck, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/agents/{id}/heartbeat"),
            Json(beat),
            None,
        )
        .await
    }

    /// `DELETE /v1/agents/{id}`: deregister an instance (after it drained).
    pub async fn deregister(&self, id: AgentId) -> Result<Deregistered, ClientError> {
        self.call(Method::DELETE, &format!("/v1/agents/{id}"), NoBody, None)
            .await
    }

    /// `GET /v1/agents`.
    pub async fn list_agents(&self) -> Result<AgentList, ClientError> {
        self.call(Method::GET, "/v1/agents", NoBody, None).await
    }

    /// `GET /v1/agents/{id}`.
    pub async fn get_agent(&self, id: AgentId) -> Result<AgentInstance, ClientError> {
        self.call(Method::GET, &format!("/v1/agents/{id}"), NoBody, None)
            .await
    }

    /// `GET /v1/pools`.
    pub async fn list_pools(&self) -> Result<PoolList, ClientError> {
        self.call(Method::GET, "/v1/pools", NoBody, None).await
    }

    /// `GET /v1/events` with its filters (`after`, `limit`, `agent_type`, `agent_id`, `kind`).
    pub async fn list_events(&self, query: &[(&str, String)]) -> Result<EventList, ClientError> {
        self.call_with(Method::GET, "/v1/events", query, NoBody, None)
            .await
    }

    /// `GET /v1/alerts`, as JSON (pending and firing alerts).
    pub async fn list_alerts(&self) -> Result<flotilla_core::wire::AlertList, ClientError> {
        self.call(Method::GET, "/v1/alerts", NoBody, None).await
    }

    /// `GET /v1/alerts/history` (`after`, `limit`).
    pub async fn alert_history(&self, query: &[(&str, String)]) -> Result<EventList, ClientError> {
        self.call_with(Method::GET, "/v1/alerts/history", query, NoBody, None)
            .await
    }

    /// `POST /v1/alerts/silences`.
    pub async fn create_silence(
        &self,
        silence: &flotilla_core::wire::NewSilence,
    ) -> Result<flotilla_core::wire::Silence, ClientError> {
        self.call(Method::POST, "/v1/alerts/silences", Json(silence), None)
            .await
    }

    /// `GET /v1/alerts/silences`.
    pub async fn list_silences(&self) -> Result<flotilla_core::wire::SilenceList, ClientError> {
        self.call(Method::GET, "/v1/alerts/silences", NoBody, None)
            .await
    }

    /// `DELETE /v1/alerts/silences/{id}`.
    pub async fn delete_silence(
        &self,
        id: uuid::Uuid,
    ) -> Result<flotilla_core::wire::Silence, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/alerts/silences/{id}"),
            NoBody,
            None,
        )
        .await
    }

    async fn call<B: RequestBody, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: B,
        timeout: Option<Duration>,
    ) -> Result<T, ClientError> {
        self.call_with(method, path, &[], body, timeout).await
    }

    async fn call_with<B: RequestBody, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: B,
        timeout: Option<Duration>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .timeout(timeout.unwrap_or(self.request_timeout));
        if !query.is_empty() {
            request = request.query(query);
        }
        let request = body.apply(request)?;
        let response = request.send().await.map_err(ClientError::Transport)?;
        let status = response.status();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await.map_err(ClientError::Transport)?;
        if !status.is_success() {
            return Err(ClientError::from_response(
                status.as_u16(),
                &bytes,
                request_id,
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Decode(format!(
                "{method} {path}: {e}; body: {}",
                error::snippet(&String::from_utf8_lossy(&bytes))
            ))
        })
    }
}

/// What a call sends as its body.
trait RequestBody {
    fn apply(self, request: RequestBuilder) -> Result<RequestBuilder, ClientError>;
}

/// No body.
struct NoBody;

/// A JSON body, serialised in one piece so it leaves in one write.
struct Json<'a, T>(&'a T);

impl RequestBody for NoBody {
    fn apply(self, request: RequestBuilder) -> Result<RequestBuilder, ClientError> {
        Ok(request)
    }
}

impl<T: Serialize> RequestBody for Json<'_, T> {
    fn apply(self, request: RequestBuilder) -> Result<RequestBuilder, ClientError> {
        let body = serde_json::to_vec(self.0)
            .map_err(|e| ClientError::Decode(format!("cannot encode the request body: {e}")))?;
        Ok(request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body))
    }
}
