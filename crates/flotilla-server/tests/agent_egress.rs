//! What the control plane sends to agents and what it takes back (issue 13): agent URLs of one
//! shape, the egress policy at registration and at send time, no redirects, bounded reads,
//! failures that tell a submitter nothing of another's instance, and reported usage that cannot
//! hurt the control plane. Agents here are raw HTTP/1.1 servers (`support/raw_agent.rs`) so
//! that they can misbehave in ways a well-formed server cannot.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::agent::{AgentInstance, AgentStatus};
use flotilla_core::id::AgentId;
use flotilla_core::task::{Task, TaskStatus};
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::{Behaviour, ScriptedAgent};
use serde_json::{Value, json};
use std::time::Duration;
use support::raw_agent::{Answer, RawAgent};
use support::{ADMIN_KEY, Backend, Database, Settings, TestServer, eventually, task};

on_both_backends!(agent_urls_that_break_a_rule_are_refused_naming_it);

const TYPE: &str = "egress";
const MIB: u64 = 1024 * 1024;

fn settings() -> Settings {
    Settings::default().pool(TYPE)
}

/// A task of one attempt with a generous deadline.
fn one_attempt() -> SubmitTask {
    SubmitTask {
        max_attempts: Some(1),
        timeout_ms: Some(20_000),
        ..task(TYPE, json!({}))
    }
}

/// `POST /v1/agents` as the admin with `url`: the status and the JSON body.
async fn register_raw(server: &TestServer, url: &str) -> (u16, Value) {
    let response = server
        .http
        .post(server.url("/v1/agents"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"type": TYPE, "url": url, "capacity": 1}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Runs one task on the only instance and returns it finished.
async fn run_one(server: &TestServer) -> Task {
    server.finish(server.submit(&one_attempt()).await.id).await
}

fn error_of(task: &Task) -> String {
    task.error.clone().unwrap_or_default()
}

/// The process's resident set size, in bytes (the server runs in this process).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

async fn agent_urls_that_break_a_rule_are_refused_naming_it(backend: Backend) {
    let server = TestServer::start(backend, settings()).await;
    let long = format!("http://127.0.0.1:9/{}", "a".repeat(2048));
    let cases = [
        (
            "http://169.254.169.254",
            "egress_denied",
            "169.254.169.254 is a cloud metadata address (agents_egress)",
        ),
        (
            "http://[::ffff:169.254.169.254]:80",
            "egress_denied",
            "is a cloud metadata address",
        ),
        (
            "http://169.254.10.10:8080",
            "egress_denied",
            "a link-local address",
        ),
        (
            "http://0.0.0.0:8080",
            "egress_denied",
            "an unspecified address",
        ),
        (
            "http://127.0.0.1:9/x?",
            "invalid_agent_url",
            "must not have a query",
        ),
        (
            "http://127.0.0.1:9/x#",
            "invalid_agent_url",
            "must not have a fragment",
        ),
        (
            "http://user:pw@127.0.0.1:9",
            "invalid_agent_url",
            "must not contain user-info",
        ),
        (long.as_str(), "invalid_agent_url", "at most 2048 bytes"),
        (
            "ftp://127.0.0.1:9",
            "invalid_agent_url",
            "http or https scheme",
        ),
    ];
    for (url, code, rule) in cases {
        let (status, body) = register_raw(&server, url).await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["error"]["code"], code, "{url}: {body}");
        assert_eq!(body["error"]["field"], "url", "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(rule), "{url}: {message}");
    }
    let agents = server.client.list_agents().await.unwrap().agents;
    assert!(agents.is_empty(), "nothing was registered: {agents:?}");
    assert!(server.store.list_agents().await.unwrap().is_empty());
    // The platform (the admin's key) may use loopback.
    let (status, body) = register_raw(&server, "http://127.0.0.1:9/agent/").await;
    assert_eq!(status, 201, "{body}");
    server.stop().await;
}

/// A host name is resolved at registration: one that resolves to a denied address is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_a_denied_address_is_refused_at_registration() {
    let settings = Settings::default()
        .raw("[agents_egress]\ndeny = [\"127.0.0.0/8\", \"::1\"]\n")
        .pool(TYPE);
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let agent = RawAgent::start(Answer::ok()).await;
    let (status, body) = register_raw(&server, &format!("http://localhost:{}", agent.port())).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "egress_denied", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("in the denied range"), "{message}");
    assert!(server.client.list_agents().await.unwrap().agents.is_empty());
    server.stop().await;
}

/// The check at send time: instances registered while the policy allowed them (here: stored
/// before a restart with a policy that denies loopback) get no request — neither a host name,
/// which the resolver drops, nor an IP literal, checked before sending — and their tasks fail
/// naming the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_the_policy_denies_at_send_time_get_no_request() {
    let agent = RawAgent::start(Answer::ok()).await;
    for host in ["localhost", "127.0.0.1"] {
        let database = Database::create(Backend::Sqlite);
        let store = database.location.open().await;
        let now = chrono::Utc::now();
        let instance = AgentInstance {
            id: AgentId(uuid::Uuid::now_v7()),
            agent_type: TYPE.into(),
            tenant_id: None,
            url: format!("http://{host}:{}", agent.port()),
            capacity: 1,
            load: 0,
            weight: 1,
            status: AgentStatus::Idle,
            version: None,
            metadata: json!({}),
            signing_secret: "00".repeat(32),
            latency_ms: None,
            success_rate: None,
            last_heartbeat: now,
            created_at: now,
        };
        store.insert_agent(&instance).await.unwrap();
        let settings = database
            .location
            .configure(settings().raw("[agents_egress]\ndeny = [\"127.0.0.0/8\", \"::1\"]\n"));
        let server = TestServer::start_on(store, settings).await;
        let done = run_one(&server).await;
        assert_eq!(done.status, TaskStatus::Failed, "{host}: {done:?}");
        let error = error_of(&done);
        assert!(
            error.contains("in the denied range 127.0.0.0/8 (agents_egress)")
                || error.contains("in the denied range ::1/128 (agents_egress)"),
            "{host}: {error}"
        );
        server.stop().await;
    }
    assert_eq!(agent.connections(), 0, "a denied address was connected to");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_fails_the_attempt_and_is_not_followed() {
    let server = TestServer::start(Backend::Sqlite, settings()).await;
    let target = RawAgent::start(Answer::ok()).await;
    let metadata =
        RawAgent::start(Answer::redirect("http://169.254.169.254/latest/meta-data/")).await;
    let local = RawAgent::start(Answer::redirect(&format!(
        "http://127.0.0.1:{}/execute",
        target.port()
    )))
    .await;
    for agent in [&metadata, &local] {
        let id = server.register_url(&agent.url(), TYPE, 1).await;
        let done = run_one(&server).await;
        assert_eq!(done.status, TaskStatus::Failed, "{done:?}");
        assert!(
            error_of(&done).contains("HTTP 307, a redirect: redirects are not followed"),
            "{done:?}"
        );
        assert!(!error_of(&done).contains("169.254"), "{done:?}");
        assert_eq!(agent.executes(), 1);
        server.deregister(id).await;
    }
    assert_eq!(
        target.connections(),
        0,
        "the redirect's target was requested"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_fails_at_the_limit_and_memory_stays_flat() {
    let server = TestServer::start(Backend::Sqlite, settings()).await;
    // 200 MB in chunks, without a Content-Length.
    let agent = RawAgent::start(Answer::Chunked { total: 200 * MIB }).await;
    server.register_url(&agent.url(), TYPE, 1).await;
    let before = rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let done = run_one(&server).await;
    sampler.abort();
    let after = rss();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "RSS before {} MiB, peak {} MiB, after {} MiB; the agent wrote {} MiB",
        before / MIB,
        peak / MIB,
        after / MIB,
        agent.bytes_written() / MIB
    );
    assert!(
        after < before + 20 * MIB,
        "RSS grew from {before} to {after}"
    );
    assert!(
        peak < before + 20 * MIB,
        "RSS peaked at {peak} from {before}"
    );
    assert_eq!(done.status, TaskStatus::Failed, "{done:?}");
    assert!(
        error_of(&done).contains("larger than the limit of 16777216 bytes"),
        "{done:?}"
    );
    assert!(agent.bytes_written() < 100 * MIB, "the answer was read on");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_lying_about_its_length_gets_no_further_than_the_limit() {
    let server = TestServer::start(Backend::Sqlite, settings()).await;
    // Declares 1 GiB: refused before reading.
    let huge = RawAgent::start(Answer::Declared {
        declared: 1024 * MIB,
        actual: MIB,
    })
    .await;
    // Declares 20 bytes and sends 50 MiB: only the declared bytes are read, which are no JSON.
    let short = RawAgent::start(Answer::Declared {
        declared: 20,
        actual: 50 * MIB,
    })
    .await;
    for (agent, want) in [
        (&huge, "larger than the limit of 16777216 bytes"),
        (&short, "agent answered with an invalid body"),
    ] {
        let id = server.register_url(&agent.url(), TYPE, 1).await;
        let before = rss();
        let done = run_one(&server).await;
        assert_eq!(done.status, TaskStatus::Failed, "{done:?}");
        assert!(error_of(&done).contains(want), "{done:?}");
        assert!(rss() < before + 20 * MIB);
        server.deregister(id).await;
    }
    server.stop().await;
}

/// The instances here are the platform's (registered with the admin's key), not the task's
/// tenant's: what they answer reaches the task as a status and a reason only, and their URL
/// never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_owners_instance_tells_the_submitter_no_body_and_no_url() {
    let settings = settings().raw(
        "[pools.health]\ninterval_ms = 100\ntimeout_ms = 500\nunhealthy_threshold = 1\nhealthy_threshold = 1",
    );
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let secret = "SECRET-internal-token http://10.9.8.7:6543/admin";
    let failing = RawAgent::start(Answer::Status {
        code: 500,
        body: secret.into(),
    })
    .await;
    let garbage = RawAgent::start(Answer::Status {
        code: 200,
        body: secret.into(),
    })
    .await;
    for agent in [&failing, &garbage] {
        let id = server.register_url(&agent.url(), TYPE, 1).await;
        let done = run_one(&server).await;
        let error = error_of(&done);
        assert_eq!(done.status, TaskStatus::Failed, "{done:?}");
        for leak in ["SECRET", "10.9.8.7", &agent.port().to_string()] {
            assert!(!error.contains(leak), "{leak} in {error}");
            for attempt in &done.attempts {
                assert!(!attempt.error.as_deref().unwrap_or_default().contains(leak));
            }
        }
        server.deregister(id).await;
    }
    assert!(error_of(&run_on_closed_port(&server).await).contains("connection refused"));
    // Health checks of the failing agent (its /health answers 500 with the body): the fleet
    // event says what happened without quoting it or naming the URL.
    let id = server.register_url(&failing.url(), TYPE, 1).await;
    let query = [("agent_id", id.to_string())];
    eventually(
        "the failed health check is an event",
        Duration::from_secs(10),
        || async {
            let events = server.client.list_events(&query).await.unwrap().events;
            events.iter().any(|e| {
                e.message
                    .contains("health checks failed, last: /health answered HTTP 500")
            })
        },
    )
    .await;
    // No fleet event names the URL: the registration event says the owner and the capacity.
    let events = server.client.list_events(&query).await.unwrap().events;
    for event in &events {
        assert!(!event.message.contains("SECRET"), "{}", event.message);
        assert!(
            !event.message.contains(&failing.port().to_string()),
            "{}",
            event.message
        );
    }
    // An unreachable instance's check: the transport error (which quotes the URL) stays out.
    let port = flotilla_testkit::free_port().unwrap();
    let id = server
        .register_url(&format!("http://127.0.0.1:{port}"), TYPE, 1)
        .await;
    let query = [("agent_id", id.to_string())];
    let failed = "health checks failed, last: agent unreachable: connection refused";
    eventually(
        "the unreachable instance fails",
        Duration::from_secs(10),
        || async {
            let events = server.client.list_events(&query).await.unwrap().events;
            events.iter().any(|e| e.message.contains(failed))
        },
    )
    .await;
    let events = server.client.list_events(&query).await.unwrap().events;
    for event in events.iter().filter(|e| e.message.contains("health check")) {
        assert!(
            !event.message.contains(&port.to_string()),
            "{}",
            event.message
        );
    }
    server.stop().await;
}

/// A task on an instance at a port nothing listens on; its URL must not show.
async fn run_on_closed_port(server: &TestServer) -> Task {
    let port = flotilla_testkit::free_port().unwrap();
    let id = server
        .register_url(&format!("http://127.0.0.1:{port}"), TYPE, 1)
        .await;
    let done = run_one(server).await;
    assert!(!error_of(&done).contains(&port.to_string()), "{done:?}");
    server.deregister(id).await;
    done
}

/// Reported usage: a model the table does not know counts as `other`, numbers are capped, and
/// none of it drives a tenant's hourly tokens (a rule over them stays quiet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_usage_is_bounded_and_never_drives_tenant_signals() {
    let settings = settings()
        .set("alerting.interval_ms", 50)
        .set("alerting.default_rules", false)
        .raw(
            "[[alerts]]\nname = \"tokens\"\nsignal = \"hourly_tokens\"\nby = \"tenant\"\n\
             comparison = \">\"\nthreshold = 10\nfor = \"0s\"\nseverity = \"critical\"\n",
        );
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    server.register(&agent, TYPE, 4).await;
    let report = json!({"report_usage": [
        {"model": "made-up-model-1", "input_tokens": u64::MAX, "output_tokens": 5},
        {"model": "made-up-model-2", "input_tokens": 7, "output_tokens": 1_000_000_000_000u64},
        {"model": "gpt-4o", "input_tokens": 3, "output_tokens": 4},
    ]});
    let done = server
        .finish(server.submit(&task(TYPE, report)).await.id)
        .await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    let metrics = server.metrics().await;
    let line = |model: &str, direction: &str| {
        format!(
            "ai_agent_token_usage_total{{agent_type=\"{TYPE}\",model=\"{model}\",direction=\"{direction}\"}} "
        )
    };
    assert!(!metrics.contains("made-up-model"), "{metrics}");
    assert!(
        metrics.contains(&format!("{}1000000007", line("other", "input"))),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("{}1000000005", line("other", "output"))),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("{}3", line("gpt-4o", "input"))),
        "{metrics}"
    );
    // Several rounds of the alert engine pass; a rule over the tenant's tokens never fires.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alerts = server.client.list_alerts().await.unwrap().alerts;
    assert!(alerts.iter().all(|a| a.rule != "tokens"), "{alerts:?}");
    server.stop().await;
}
