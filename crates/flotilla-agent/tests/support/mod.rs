//! A fake control plane that records what agents send it and answers per the agent contract.

#![allow(dead_code)]

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use flotilla_core::id::AgentId;
use flotilla_core::wire::{
    Deregistered, Desired, Heartbeat, HeartbeatAck, RegisterAgent, Registered,
};
use serde_json::json;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const KEY: &str = "flt_test_agentkey";
/// The signing secret the fake hands every registration.
pub const SIGNING_SECRET: &str = "secret";

/// The `x-flotilla-signature` of `body` signed now with [`SIGNING_SECRET`].
pub fn sign_now(body: &[u8]) -> String {
    flotilla_core::signature::sign(SIGNING_SECRET.as_bytes(), body, chrono::Utc::now())
}

/// One call the fake received.
#[derive(Clone, Debug)]
pub enum Event {
    Register {
        body: RegisterAgent,
        id: AgentId,
        at: Instant,
    },
    Heartbeat {
        id: AgentId,
        beat: Heartbeat,
        at: Instant,
    },
    Delete {
        id: AgentId,
        at: Instant,
    },
}

#[derive(Default)]
struct State_ {
    events: Vec<Event>,
    known: HashSet<AgentId>,
    /// Every call answers 503 while set.
    down: bool,
    /// Heartbeats answer `desired: drain` while set.
    drain: bool,
    /// Registration answers this status while set.
    refuse_registration: Option<StatusCode>,
    bad_auth: usize,
}

#[derive(Clone, Default)]
pub struct FakeControlPlane {
    state: Arc<Mutex<State_>>,
    pub url: String,
}

impl FakeControlPlane {
    pub async fn start() -> FakeControlPlane {
        let mut fake = FakeControlPlane::default();
        let app = Router::new()
            .route("/v1/agents", post(register))
            .route("/v1/agents/{id}/heartbeat", post(heartbeat))
            .route("/v1/agents/{id}", delete(deregister))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        fake.url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    /// A fake that does not run, at `url`.
    pub fn unreachable(url: String) -> FakeControlPlane {
        FakeControlPlane {
            url,
            ..FakeControlPlane::default()
        }
    }

    fn state(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap()
    }

    pub fn events(&self) -> Vec<Event> {
        self.state().events.clone()
    }

    pub fn registrations(&self) -> Vec<(RegisterAgent, AgentId)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Register { body, id, .. } => Some((body, id)),
                _ => None,
            })
            .collect()
    }

    pub fn heartbeats(&self) -> Vec<(AgentId, Heartbeat, Instant)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Heartbeat { id, beat, at } => Some((id, beat, at)),
                _ => None,
            })
            .collect()
    }

    pub fn deletes(&self) -> Vec<(AgentId, Instant)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Delete { id, at } => Some((id, at)),
                _ => None,
            })
            .collect()
    }

    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    pub fn set_drain(&self, drain: bool) {
        self.state().drain = drain;
    }

    pub fn refuse_registration(&self, status: StatusCode) {
        self.state().refuse_registration = Some(status);
    }

    /// Forgets every instance, as when the registry declared them dead.
    pub fn forget_all(&self) {
        self.state().known.clear();
    }

    pub fn bad_auth(&self) -> usize {
        self.state().bad_auth
    }

    /// Waits until `check` holds, polling every 20 ms; panics after `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&FakeControlPlane) -> bool,
    ) {
        let started = Instant::now();
        while !check(self) {
            assert!(
                started.elapsed() < timeout,
                "timed out waiting for {what}; events: {:#?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn error(status: StatusCode, code: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": code}})),
    )
        .into_response()
}

/// Checks the bearer key and the outage flag.
fn gate(fake: &FakeControlPlane, headers: &HeaderMap) -> Option<Response> {
    let mut state = fake.state();
    if state.down {
        return Some(error(StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
    }
    let expected = format!("Bearer {KEY}");
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        state.bad_auth += 1;
        return Some(error(StatusCode::UNAUTHORIZED, "unauthenticated"));
    }
    None
}

async fn register(
    State(fake): State<FakeControlPlane>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<RegisterAgent>,
) -> Response {
    if let Some(refusal) = gate(&fake, &headers) {
        return refusal;
    }
    let mut state = fake.state();
    if let Some(status) = state.refuse_registration {
        return error(status, "refused");
    }
    let id = AgentId::from_uuid(Uuid::now_v7());
    state.known.insert(id);
    state.events.push(Event::Register {
        body,
        id,
        at: Instant::now(),
    });
    axum::Json(Registered {
        id,
        heartbeat_interval_s: 1,
        signing_secret: SIGNING_SECRET.into(),
    })
    .into_response()
}

async fn heartbeat(
    State(fake): State<FakeControlPlane>,
    headers: HeaderMap,
    Path(id): Path<AgentId>,
    axum::Json(beat): axum::Json<Heartbeat>,
) -> Response {
    if let Some(refusal) = gate(&fake, &headers) {
        return refusal;
    }
    let mut state = fake.state();
    if !state.known.contains(&id) {
        return error(StatusCode::NOT_FOUND, "not_found");
    }
    state.events.push(Event::Heartbeat {
        id,
        beat,
        at: Instant::now(),
    });
    let desired = if state.drain {
        Desired::Drain
    } else {
        Desired::Run
    };
    axum::Json(HeartbeatAck { desired }).into_response()
}

async fn deregister(
    State(fake): State<FakeControlPlane>,
    headers: HeaderMap,
    Path(id): Path<AgentId>,
) -> Response {
    if let Some(refusal) = gate(&fake, &headers) {
        return refusal;
    }
    let mut state = fake.state();
    if !state.known.remove(&id) {
        return error(StatusCode::NOT_FOUND, "not_found");
    }
    state.events.push(Event::Delete {
        id,
        at: Instant::now(),
    });
    axum::Json(Deregistered {
        status: "deregistered".into(),
    })
    .into_response()
}
