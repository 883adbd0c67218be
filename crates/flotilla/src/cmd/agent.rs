//! `flotilla agent`: a reference agent worker running simulated work of one type under the
//! agent SDK's runtime (registration, heartbeats, drain on SIGTERM/SIGINT).
//!
//! Its flags can also come from the environment, which is how the control plane's provisioners
//! configure it: the `local` provisioner sets `FLOTILLA_INSTANCE_NAME` and `FLOTILLA_PARENT_PID`,
//! a Kubernetes Deployment sets `AGENT_TYPE`, `FLOTILLA_CONTROL_PLANE`, `FLOTILLA_ADVERTISE_URL`
//! and `FLOTILLA_KEY`.

use anyhow::Context as _;
use flotilla_agent::{AgentSecurity, Latency, RuntimeConfig, ServerTls, SimulatedAgent};
use flotilla_client::TlsOptions;
use nix::unistd::{Pid, getppid};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Run a simulated agent worker that registers with a control plane.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The agent type (pool) this worker serves, e.g. `code_generator`, `security_scanner`,
    /// `performance_tester`; other types echo their input.
    #[arg(long = "type", env = "AGENT_TYPE", value_name = "TYPE")]
    pub agent_type: String,

    /// Base URL of the control plane.
    #[arg(
        long,
        env = "FLOTILLA_CONTROL_PLANE",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub control_plane: String,

    /// API key with role `agent`.
    #[arg(long, env = "FLOTILLA_KEY", hide_env_values = true, value_name = "KEY")]
    pub key: String,

    /// Address to serve `/execute` and `/health` on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// URL the control plane should call; default `http://<bound address>`.
    #[arg(long, env = "FLOTILLA_ADVERTISE_URL", value_name = "URL")]
    pub advertise_url: Option<String>,

    /// Tasks run at once; more get 429.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub capacity: u32,

    /// Weight for weighted balancing (the control plane's default when absent).
    #[arg(long, value_name = "N")]
    pub weight: Option<u32>,

    /// Median latency of simulated work, in milliseconds (log-normal distribution).
    #[arg(long, value_name = "MS", default_value_t = 200.0)]
    pub median_ms: f64,

    /// 99th-percentile latency of simulated work, in milliseconds (at least the median).
    #[arg(long, value_name = "MS", default_value_t = 1000.0)]
    pub p99_ms: f64,

    /// Share of calls, 0 to 1, that fail with a transient error (retried by the control plane).
    #[arg(long, value_name = "SHARE", default_value_t = 0.0)]
    pub failure_rate: f64,

    /// On shutdown, how long to wait for in-flight tasks before deregistering anyway.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub drain_timeout_secs: u64,

    /// Largest difference, in seconds, accepted between the timestamp of a request signature
    /// from the control plane and this machine's clock; older or newer requests get 401.
    #[arg(
        long,
        env = "FLOTILLA_SIGNATURE_MAX_SKEW_SECS",
        value_name = "SECONDS",
        default_value_t = 300
    )]
    pub signature_max_skew_secs: u64,

    /// Longest wait for a request's headers, on a new connection and between the requests of a
    /// kept-alive one; slower clients are disconnected.
    #[arg(
        long,
        env = "FLOTILLA_AGENT_HEADER_READ_TIMEOUT_SECS",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    pub header_read_timeout_secs: u64,

    /// Connections served at once; more wait in the kernel's backlog until one closes.
    #[arg(
        long,
        env = "FLOTILLA_AGENT_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 10_000
    )]
    pub max_connections: usize,

    /// PEM certificate chain to serve `/execute` and `/health` over HTTPS (with --tls-key).
    #[arg(
        long,
        env = "FLOTILLA_AGENT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "FLOTILLA_AGENT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: only callers presenting a client certificate they signed (the
    /// control plane's `agents_tls.cert_file`) may connect (mutual TLS; needs --tls-cert).
    #[arg(
        long,
        env = "FLOTILLA_AGENT_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub client_ca: Option<PathBuf>,

    /// PEM CA certificates to trust for an `https` control plane.
    #[arg(long, env = "FLOTILLA_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// PEM client certificate presented to the control plane (its `tls.client_ca_file`).
    #[arg(
        long,
        env = "FLOTILLA_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "FLOTILLA_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// Name the control plane gave this process when it spawned it, reported at registration
    /// (metadata `instance`) so that the registered instance maps to the process.
    #[arg(long, env = "FLOTILLA_INSTANCE_NAME", value_name = "NAME")]
    pub instance_name: Option<String>,

    /// Pid of the control plane that spawned this process: when it is no longer our parent (it
    /// died and we were re-parented), exit at once without draining, since nobody is left to
    /// collect the results.
    #[arg(
        long,
        env = "FLOTILLA_PARENT_PID",
        value_name = "PID",
        value_parser = clap::value_parser!(i32).range(1..)
    )]
    pub parent_pid: Option<i32>,
}

/// How often the parent is checked.
const PARENT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the worker until SIGTERM or SIGINT (then drains and deregisters) or until the control
/// plane asks it to drain. A second signal exits at once.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let latency =
        Latency::new(args.median_ms, args.p99_ms).context("invalid --median-ms/--p99-ms")?;
    let agent = SimulatedAgent::new(args.agent_type.clone(), latency, args.failure_rate)
        .context("invalid simulated agent settings")?;
    let config = RuntimeConfig {
        agent_type: args.agent_type.clone(),
        capacity: args.capacity,
        listen: args.listen,
        advertise_url: args.advertise_url,
        control_plane: args.control_plane,
        key: args.key,
        weight: args.weight,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        metadata: Some(metadata(args.instance_name.as_deref())),
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        security: AgentSecurity {
            max_signature_skew: Duration::from_secs(args.signature_max_skew_secs),
            server_tls: match (args.tls_cert, args.tls_key) {
                (Some(cert_file), Some(key_file)) => Some(ServerTls {
                    cert_file,
                    key_file,
                    client_ca_file: args.client_ca,
                }),
                // clap requires both or neither.
                _ => None,
            },
            control_plane_tls: TlsOptions {
                ca_file: args.ca_file,
                client_cert: args.client_cert,
                client_key: args.client_key,
            },
            connections: flotilla_agent::ConnectionLimits {
                header_read_timeout: Duration::from_secs(args.header_read_timeout_secs.max(1)),
                max_connections: args.max_connections.max(1),
                ..flotilla_agent::ConnectionLimits::default()
            },
        },
    };

    let shutdown = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let signals = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("Signal received; draining. A second signal exits at once.");
            shutdown.cancel();
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::warn!("Second signal received; exiting without draining.");
            std::process::exit(130);
        }
    });

    let scheme = if config.security.server_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let work = async {
        let running = match flotilla_agent::start(agent, config, shutdown.clone()).await {
            Ok(running) => running,
            Err(flotilla_agent::AgentRuntimeError::ShutdownBeforeRegistration) => return Ok(()),
            Err(e) => return Err(e).context("the agent could not start"),
        };
        let listening_url = format!("{scheme}://{}", running.addr);
        {
            // Tests and scripts wait for this exact line (see flotilla-testkit's AgentProcess).
            let mut stdout = std::io::stdout().lock();
            writeln!(
                stdout,
                "agent {} ({}) listening on {}",
                running.id, args.agent_type, listening_url
            )?;
            stdout.flush()?;
        }
        running
            .wait()
            .await
            .context("the agent stopped with an error")
    };
    let result = match args.parent_pid {
        Some(parent) => tokio::select! {
            result = work => result,
            actual = parent_gone(Pid::from_raw(parent)) => {
                tracing::warn!(
                    parent_pid = parent,
                    actual_parent_pid = actual.as_raw(),
                    "The control plane that started this agent is gone; exiting without draining."
                );
                Ok(())
            }
        },
        None => work.await,
    };
    signals.abort();
    result
}

/// The registration metadata: the instance name, when the control plane spawned this process.
fn metadata(instance_name: Option<&str>) -> serde_json::Value {
    let mut metadata = serde_json::Map::new();
    metadata.insert("simulated".to_owned(), serde_json::Value::Bool(true));
    if let Some(name) = instance_name {
        metadata.insert("instance".to_owned(), serde_json::Value::from(name));
    }
    serde_json::Value::Object(metadata)
}

/// Resolves with our current parent once it is no longer `parent`; checks at once, then every
/// [`PARENT_CHECK_INTERVAL`]. Polling `getppid` needs no `unsafe` (unlike
/// `prctl(PR_SET_PDEATHSIG)`) and survives the parent being SIGKILLed.
async fn parent_gone(parent: Pid) -> Pid {
    let mut tick = tokio::time::interval(PARENT_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let actual = getppid();
        if actual != parent {
            return actual;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_the_instance_when_spawned_by_the_control_plane() {
        assert_eq!(metadata(None), serde_json::json!({"simulated": true}));
        assert_eq!(
            metadata(Some("code_generator-3")),
            serde_json::json!({"simulated": true, "instance": "code_generator-3"})
        );
    }
}
