//! Registration, heartbeats and the drain sequence: the instance's side of the registry.
//!
//! The control plane may be down for a while (restarted, even SIGKILLed): its registry is
//! durable, so heartbeats simply resume on the same id once it answers again. Outages are logged
//! once when they start and once when they end. A heartbeat answered 404 means the control plane
//! forgot the instance (it was declared dead and removed), so the runtime registers it again and
//! carries on under the new id.

use super::AgentRuntimeError;
use super::backoff::Backoff;
use super::gate::Gate;
use super::signature::Verifier;
use flotilla_client::{Client, ClientError};
use flotilla_core::id::AgentId;
use flotilla_core::wire::ReportedStatus;
use flotilla_core::wire::{Desired, Heartbeat, RegisterAgent, Registered};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// First retry delay of a failed call to the control plane.
const RETRY_INITIAL: Duration = Duration::from_millis(250);
/// Longest delay between registration attempts.
const REGISTER_RETRY_MAX: Duration = Duration::from_secs(5);
/// Tries of the final `DELETE`.
const DEREGISTER_TRIES: u32 = 3;
/// How long the stopped server may take to close its connections before it is abandoned. By
/// then in-flight work has finished or outlived the drain timeout, so this only lets the last
/// answers leave.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// The current registration.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) id: AgentId,
    pub(crate) heartbeat_interval: Duration,
}

impl From<&Registered> for Session {
    /// The signing secret is not kept here: it goes to the `/execute` handler's [`Verifier`].
    fn from(registered: &Registered) -> Self {
        Session {
            id: registered.id,
            // A zero interval would spin; one second is the floor.
            heartbeat_interval: Duration::from_secs(registered.heartbeat_interval_s.max(1)),
        }
    }
}

/// Why the heartbeat loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// The shutdown token was cancelled.
    Shutdown,
    /// The control plane answered `desired: drain`.
    DrainRequested,
    /// Shutdown came while the instance was registering again, so it has no registration.
    Unregistered,
}

/// Everything the background lifecycle task owns.
pub(crate) struct Lifecycle {
    pub(crate) client: Client,
    pub(crate) registration: RegisterAgent,
    pub(crate) gate: Arc<Gate>,
    /// Checks `/execute` signatures; told the secret of every new registration.
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) session: watch::Sender<Session>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) drain_timeout: Duration,
    pub(crate) server_stop: CancellationToken,
    pub(crate) server: JoinHandle<Result<(), AgentRuntimeError>>,
}

impl Lifecycle {
    /// Heartbeats until shutdown or a drain request, then drains, deregisters and stops the
    /// server.
    pub(crate) async fn run(mut self) -> Result<(), AgentRuntimeError> {
        let stop = self.heartbeat_until_stop().await;
        let registered = !matches!(stop, Ok(Stop::Unregistered) | Err(_));
        match stop {
            Ok(Stop::DrainRequested) => {
                tracing::info!("The control plane asked this instance to drain.")
            }
            Ok(Stop::Shutdown | Stop::Unregistered) => tracing::info!("Shutting down."),
            Err(ref e) => tracing::error!(error = %e, "Cannot stay registered; shutting down."),
        }
        self.drain(registered).await;
        self.stop_server().await?;
        stop.map(|_| ())
    }

    fn id(&self) -> AgentId {
        self.session.borrow().id
    }

    fn interval(&self) -> Duration {
        self.session.borrow().heartbeat_interval
    }

    async fn heartbeat_until_stop(&mut self) -> Result<Stop, AgentRuntimeError> {
        let mut outage = Outage::default();
        let mut backoff = Backoff::new(RETRY_INITIAL, self.interval());
        let mut delay = self.interval();
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Ok(Stop::Shutdown),
                () = tokio::time::sleep(delay) => {}
            }
            let beat = Heartbeat {
                load: self.gate.load(),
                status: None,
            };
            let id = self.id();
            let answer = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Ok(Stop::Shutdown),
                answer = self.client.heartbeat(id, &beat) => answer,
            };
            match answer {
                Ok(ack) => {
                    outage.recovered();
                    backoff.reset();
                    delay = self.interval();
                    if ack.desired == Desired::Drain {
                        return Ok(Stop::DrainRequested);
                    }
                }
                Err(e) if e.status() == Some(404) => {
                    tracing::warn!(agent_id = %id, "The control plane no longer knows this instance; registering again.");
                    outage.recovered();
                    match register(&self.client, &self.registration, &self.shutdown).await {
                        Ok(registered) => {
                            tracing::info!(agent_id = %registered.id, "Agent registered again.");
                            self.verifier.set_secret(registered.signing_secret.clone());
                            self.session.send_replace(Session::from(&registered));
                            backoff = Backoff::new(RETRY_INITIAL, self.interval());
                            delay = self.interval();
                        }
                        Err(AgentRuntimeError::ShutdownBeforeRegistration) => {
                            return Ok(Stop::Unregistered);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => {
                    outage.failed(
                        "Heartbeat failed; retrying until the control plane answers.",
                        &e,
                    );
                    delay = backoff.next_delay();
                }
            }
        }
    }

    /// Refuses new work, tells the control plane, and waits for in-flight work up to the drain
    /// timeout; then deregisters.
    async fn drain(&self, registered: bool) {
        self.gate.start_draining();
        tracing::info!(
            load = self.gate.load(),
            "Draining: no new tasks; waiting for in-flight tasks."
        );
        if registered {
            self.draining_heartbeat().await;
        }

        let idle = self.gate.wait_idle();
        let timeout = tokio::time::sleep(self.drain_timeout);
        let interval = self.interval();
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(idle, timeout);
        loop {
            tokio::select! {
                biased;
                () = &mut idle => break,
                () = &mut timeout => {
                    tracing::warn!(
                        load = self.gate.load(),
                        drain_timeout_s = self.drain_timeout.as_secs_f64(),
                        "Drain timeout passed with tasks still running; deregistering anyway."
                    );
                    break;
                }
                // Keep the registration alive while in-flight work finishes, so the control plane
                // does not declare the instance dead and re-queue that work.
                _ = ticker.tick(), if registered => self.draining_heartbeat().await,
            }
        }

        if registered {
            self.deregister().await;
        }
    }

    async fn draining_heartbeat(&self) {
        let beat = Heartbeat {
            load: self.gate.load(),
            status: Some(ReportedStatus::Draining),
        };
        if let Err(e) = self.client.heartbeat(self.id(), &beat).await {
            tracing::debug!(error = %e, "Draining heartbeat failed.");
        }
    }

    async fn deregister(&self) {
        let id = self.id();
        for attempt in 1..=DEREGISTER_TRIES {
            match self.client.deregister(id).await {
                Ok(answer) => {
                    tracing::info!(agent_id = %id, status = %answer.status, "Agent deregistered.");
                    return;
                }
                Err(e) if e.status() == Some(404) => {
                    tracing::info!(agent_id = %id, "The control plane had already removed this instance.");
                    return;
                }
                Err(e) if attempt < DEREGISTER_TRIES => {
                    tracing::debug!(error = %e, attempt, "Deregistration failed; retrying.");
                    tokio::time::sleep(RETRY_INITIAL * attempt).await;
                }
                Err(e) => {
                    // The control plane will declare the instance dead when its heartbeats stop.
                    tracing::warn!(error = %e, agent_id = %id, "Cannot deregister; the control plane will expire this instance.");
                }
            }
        }
    }

    async fn stop_server(self) -> Result<(), AgentRuntimeError> {
        self.server_stop.cancel();
        let mut server = self.server;
        match tokio::time::timeout(SERVER_STOP_TIMEOUT, &mut server).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(AgentRuntimeError::Task(join.to_string())),
            Err(_) => {
                tracing::warn!(
                    "The HTTP server did not close its connections in time; stopping it."
                );
                server.abort();
                Ok(())
            }
        }
    }
}

/// Registers the instance, retrying with capped backoff while the control plane is unreachable
/// or failing; stops on a refusal retrying cannot fix, or on shutdown.
pub(crate) async fn register(
    client: &Client,
    registration: &RegisterAgent,
    shutdown: &CancellationToken,
) -> Result<Registered, AgentRuntimeError> {
    let mut outage = Outage::default();
    let mut backoff = Backoff::new(RETRY_INITIAL, REGISTER_RETRY_MAX);
    loop {
        let answer = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Err(AgentRuntimeError::ShutdownBeforeRegistration),
            answer = client.register_agent(registration) => answer,
        };
        match answer {
            Ok(registered) => {
                outage.recovered();
                return Ok(registered);
            }
            Err(e) if is_permanent(&e) => return Err(AgentRuntimeError::Registration(e)),
            Err(e) => outage.failed("Cannot register with the control plane; retrying.", &e),
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Err(AgentRuntimeError::ShutdownBeforeRegistration),
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// A 4xx other than 408 and 429 says the request itself is wrong (bad key, unknown type).
fn is_permanent(error: &ClientError) -> bool {
    match error {
        ClientError::Api { status, .. } => {
            (400..500).contains(status) && !matches!(status, 408 | 429)
        }
        ClientError::InvalidUrl(_) | ClientError::InvalidKey(_) | ClientError::Tls(_) => true,
        ClientError::Transport(_) | ClientError::Decode(_) => false,
    }
}

/// Logs an outage of the control plane once when it starts and once when it ends.
#[derive(Debug, Default)]
struct Outage {
    since: Option<Instant>,
}

impl Outage {
    fn failed(&mut self, message: &'static str, error: &ClientError) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(error = %error, "{message}");
        } else {
            tracing::debug!(error = %error, "{message}");
        }
    }

    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                outage_s = since.elapsed().as_secs_f64(),
                "The control plane answers again."
            );
        }
    }
}
