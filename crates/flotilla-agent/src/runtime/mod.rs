//! The agent runtime: serves an [`Agent`] over the agent contract and keeps it registered.
//!
//! Start-up order matters: the listener is bound first, so that `listen` may use port 0 and the
//! advertised URL names the real port; the HTTP server runs before registration, so the control
//! plane can reach the instance as soon as it learns of it. Then the lifecycle task heartbeats
//! until shutdown (or a `drain` request from the control plane) and runs the drain sequence:
//! draining heartbeat, refuse new work (503), wait for in-flight work up to `drain_timeout`,
//! deregister, stop the server.

mod backoff;
mod gate;
mod lifecycle;
mod server;
mod signature;
mod tls;

use crate::Agent;
use flotilla_client::{Client, ClientError, TlsOptions};
use flotilla_core::id::AgentId;
use flotilla_core::wire::RegisterAgent;
use gate::Gate;
use lifecycle::{Lifecycle, Session};
use signature::Verifier;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use tls::ServerTls;

/// Limit on one call to the control plane, so that a hung control plane cannot stall a
/// heartbeat past the next one or a shutdown for long.
const CONTROL_PLANE_TIMEOUT: Duration = Duration::from_secs(5);

/// How an agent instance runs and where it registers.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// The pool this instance serves, e.g. `code_generator`.
    pub agent_type: String,
    /// Tasks run at once; further `/execute` calls get 429.
    pub capacity: u32,
    /// Address of the HTTP listener; port 0 picks a free port.
    pub listen: SocketAddr,
    /// URL the control plane reaches the instance at; default `http://{bound address}`, or
    /// `https://…` with [`AgentSecurity::server_tls`] (with `127.0.0.1` in place of an
    /// unspecified address such as `0.0.0.0`).
    pub advertise_url: Option<String>,
    /// Base URL of the control plane, e.g. `http://127.0.0.1:8080`.
    pub control_plane: String,
    /// API key with role `agent`.
    pub key: String,
    /// Weight for weighted balancing; the control plane's default when absent.
    pub weight: Option<u32>,
    /// How long a shutdown waits for in-flight tasks before it deregisters anyway.
    pub drain_timeout: Duration,
    /// Free-form metadata shown in the registry.
    pub metadata: Option<serde_json::Value>,
    /// Version of the agent's code, shown in the registry.
    pub version: Option<String>,
    /// How the instance checks the control plane's requests.
    pub security: AgentSecurity,
}

/// How an instance checks who calls it.
#[derive(Clone, Debug)]
pub struct AgentSecurity {
    /// Largest difference accepted between a request signature's timestamp and this instance's
    /// clock (default five minutes); accepted signatures are remembered this long so that a
    /// replay is refused.
    pub max_signature_skew: Duration,
    /// TLS on the instance's listener, optionally requiring the control plane's client
    /// certificate (mutual TLS); plain HTTP when `None`.
    pub server_tls: Option<ServerTls>,
    /// TLS towards the control plane (registration, heartbeats): the CA that signs its
    /// certificate, and this instance's client certificate when the control plane requires one.
    pub control_plane_tls: TlsOptions,
    /// Bounds on the connections the instance's listener serves: a header-read (and idle)
    /// timeout, and caps on connections and TLS handshakes in flight; the defaults are the
    /// control plane's.
    pub connections: flotilla_tls::ConnectionLimits,
}

impl Default for AgentSecurity {
    fn default() -> Self {
        AgentSecurity {
            max_signature_skew: flotilla_core::signature::DEFAULT_MAX_SKEW,
            server_tls: None,
            control_plane_tls: TlsOptions::default(),
            connections: flotilla_tls::ConnectionLimits::default(),
        }
    }
}

impl fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("agent_type", &self.agent_type)
            .field("capacity", &self.capacity)
            .field("listen", &self.listen)
            .field("advertise_url", &self.advertise_url)
            .field("control_plane", &self.control_plane)
            .field("key", &"<redacted>")
            .field("weight", &self.weight)
            .field("drain_timeout", &self.drain_timeout)
            .field("metadata", &self.metadata)
            .field("version", &self.version)
            .field("security", &self.security)
            .finish()
    }
}

/// Why the runtime could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentRuntimeError {
    /// The configuration is unusable (zero capacity, empty type, bad URL).
    #[error("invalid agent configuration: {0}")]
    Config(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The control plane refused the registration for a reason retrying cannot fix (bad key,
    /// unknown agent type, invalid fields).
    #[error("the control plane refused the registration: {0}")]
    Registration(#[source] ClientError),
    /// Shutdown was requested before the instance was registered.
    #[error("shut down before the instance was registered")]
    ShutdownBeforeRegistration,
    /// A TLS certificate, key or CA file is missing or unusable (the message names it).
    #[error("TLS: {0}")]
    Tls(String),
    /// The HTTP server failed.
    #[error("the HTTP server failed: {0}")]
    Server(#[source] std::io::Error),
    /// A runtime task ended abnormally.
    #[error("a runtime task ended abnormally: {0}")]
    Task(String),
}

/// A started, registered agent instance.
#[derive(Debug)]
pub struct RunningAgent {
    /// The address the HTTP server is bound to.
    pub addr: SocketAddr,
    /// The URL advertised to the control plane.
    pub url: String,
    /// The id of the first registration (see [`RunningAgent::current_id`]).
    pub id: AgentId,
    session: watch::Receiver<Session>,
    lifecycle: JoinHandle<Result<(), AgentRuntimeError>>,
}

impl RunningAgent {
    /// The id the instance is registered under now: it changes when the control plane forgot
    /// the instance (a heartbeat answered 404) and the runtime registered it again.
    pub fn current_id(&self) -> AgentId {
        self.session.borrow().id
    }

    /// Waits until the instance has drained, deregistered and stopped its server, which happens
    /// after the shutdown token is cancelled or the control plane asked it to drain.
    pub async fn wait(self) -> Result<(), AgentRuntimeError> {
        self.lifecycle
            .await
            .map_err(|e| AgentRuntimeError::Task(e.to_string()))?
    }
}

/// Runs `agent` until `shutdown` is cancelled (or the control plane asks the instance to
/// drain), then drains and deregisters it. A shutdown before registration is not an error.
pub async fn run<A: Agent>(
    agent: A,
    config: RuntimeConfig,
    shutdown: CancellationToken,
) -> Result<(), AgentRuntimeError> {
    match start(agent, config, shutdown).await {
        Ok(running) => running.wait().await,
        Err(AgentRuntimeError::ShutdownBeforeRegistration) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Binds the listener, serves the agent and registers it (retrying until the control plane
/// answers or `shutdown` is cancelled); returns once registered, with the lifecycle running in
/// the background. Await [`RunningAgent::wait`] to learn when it has stopped.
pub async fn start<A: Agent>(
    agent: A,
    config: RuntimeConfig,
    shutdown: CancellationToken,
) -> Result<RunningAgent, AgentRuntimeError> {
    validate(&config)?;
    let client = Client::with_tls(
        &config.control_plane,
        Some(config.key.clone()),
        &config.security.control_plane_tls,
    )
    .map_err(|e| AgentRuntimeError::Config(e.to_string()))?
    .with_request_timeout(CONTROL_PLANE_TIMEOUT);

    // Certificates are read before anything listens, so that a bad file stops the start.
    let tls = config
        .security
        .server_tls
        .as_ref()
        .map(tls::server_config)
        .transpose()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentRuntimeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| AgentRuntimeError::Bind {
            addr: config.listen,
            source,
        })?;
    let url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| advertised_url(addr, tls.is_some()));

    let gate = Arc::new(Gate::new(config.capacity));
    let verifier = Arc::new(Verifier::new(config.security.max_signature_skew));
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listener,
        tls,
        server::router(Arc::new(agent), Arc::clone(&gate), Arc::clone(&verifier)),
        config.security.connections,
        server_stop.clone(),
    ));
    tracing::info!(%addr, agent_type = %config.agent_type, "Agent listening.");

    let registration = RegisterAgent {
        agent_type: config.agent_type.clone(),
        url: url.clone(),
        capacity: config.capacity,
        weight: config.weight,
        metadata: config.metadata.clone(),
        version: config.version.clone(),
    };
    let registered = match lifecycle::register(&client, &registration, &shutdown).await {
        Ok(registered) => registered,
        Err(e) => {
            server_stop.cancel();
            if let Err(join) = server.await {
                tracing::warn!(error = %join, "The HTTP server task ended abnormally.");
            }
            return Err(e);
        }
    };
    let id = registered.id;
    verifier.set_secret(registered.signing_secret.clone());
    tracing::info!(agent_id = %id, %url, "Agent registered.");

    let (session_tx, session) = watch::channel(Session::from(&registered));
    let lifecycle = Lifecycle {
        client,
        registration,
        gate,
        verifier,
        session: session_tx,
        shutdown,
        drain_timeout: config.drain_timeout,
        server_stop,
        server,
    };
    let lifecycle = tokio::spawn(lifecycle.run());
    Ok(RunningAgent {
        addr,
        url,
        id,
        session,
        lifecycle,
    })
}

fn validate(config: &RuntimeConfig) -> Result<(), AgentRuntimeError> {
    if config.agent_type.trim().is_empty() {
        return Err(AgentRuntimeError::Config(
            "the agent type must not be empty".into(),
        ));
    }
    if config.capacity == 0 {
        return Err(AgentRuntimeError::Config(
            "the capacity must be at least 1".into(),
        ));
    }
    Ok(())
}

/// `http://{addr}` (`https` over TLS), naming the loopback address when the listener is bound
/// to all interfaces (an unspecified address cannot be connected to).
fn advertised_url(addr: SocketAddr, tls: bool) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_url_replaces_unspecified_addresses() {
        let any: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 4000));
        assert_eq!(advertised_url(any, false), "http://127.0.0.1:4000");
        let v6: SocketAddr = SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 4000));
        assert_eq!(advertised_url(v6, false), "http://[::1]:4000");
        assert_eq!(advertised_url(any, true), "https://127.0.0.1:4000");
    }
}
