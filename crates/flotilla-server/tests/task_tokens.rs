//! A per-task model-gateway token lives exactly as long as its attempt (docs/security.md): it
//! calls models while the attempt runs, and is refused with 401 `attempt_ended` (OpenAI-shaped on
//! the gateway's routes) once the attempt succeeded, failed and was retried, or was cancelled —
//! long before its deadline — on the replica that ended it and, within a second, on the others.
//! The agent is the testkit's scripted one; the token is the one its `/execute` envelope carried.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::task::TaskStatus;
use flotilla_core::wire::{ExecuteRequest, SubmitTask};
use flotilla_testkit::{Behaviour, ScriptedAgent};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{Backend, Database, Settings, TestServer, task};

on_both_backends!(
    a_token_calls_models_while_its_attempt_runs_and_not_after_it_succeeded,
    a_retried_attempt_gets_a_new_token_and_the_old_one_is_refused,
    a_cancelled_attempt_has_its_token_refused_at_once,
);

const TYPE: &str = "tokens";
/// The type of the replica test's agent that dies mid-attempt.
const DYING: &str = "tokens_dying";
/// Long enough that every refusal below comes from the attempt's end, not the deadline.
const TIMEOUT_MS: i64 = 60_000;

/// A chat completion (simulated model) with `token`: the status and the JSON body.
async fn chat(server: &TestServer, token: &str) -> (u16, Value) {
    let response = server
        .http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// `GET /v1/models` with `token`: the cheapest call a token may make.
async fn models(server: &TestServer, token: &str) -> u16 {
    server
        .http
        .get(server.url("/v1/models"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Asserts the OpenAI-shaped refusal of a token whose attempt ended.
fn assert_attempt_ended((status, body): &(u16, Value), what: &str) {
    assert_eq!(*status, 401, "{what}: {body}");
    let error = &body["error"];
    assert_eq!(error["type"], "authentication_error", "{what}: {body}");
    assert_eq!(error["code"], "attempt_ended", "{what}: {body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("attempt has ended"), "{what}: {body}");
}

/// The token of the `n`-th `/execute` the agent received (0-based), once it arrived.
async fn token_of_call(agent: &ScriptedAgent, n: usize) -> (ExecuteRequest, String) {
    assert!(
        agent.wait_for_calls(n + 1, Duration::from_secs(10)).await,
        "call {n} never arrived"
    );
    let request = agent.requests().swap_remove(n);
    let token = request.model_gateway.clone().unwrap().token;
    (request, token)
}

fn submission() -> SubmitTask {
    SubmitTask {
        timeout_ms: Some(TIMEOUT_MS),
        ..task(TYPE, json!({"n": 1}))
    }
}

async fn a_token_calls_models_while_its_attempt_runs_and_not_after_it_succeeded(backend: Backend) {
    let server = TestServer::start(backend, Settings::default().pool(TYPE)).await;
    let agent = ScriptedAgent::start(Behaviour::Succeed {
        delay: Duration::from_millis(800),
    })
    .unwrap();
    server.register(&agent, TYPE, 1).await;
    let submitted = server.submit(&submission()).await;
    let (_, token) = token_of_call(&agent, 0).await;

    // During the attempt: twice (the second from the cache), answered by the model.
    for _ in 0..2 {
        let (status, body) = chat(&server, &token).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "chat.completion");
    }
    assert_eq!(models(&server, &token).await, 200);

    // Busy until the end, as an agent calling models would be: every call until then is
    // honoured, and the cached answer stays fresh.
    let mut seen = Vec::new();
    while server.status(submitted.id).await == TaskStatus::Running {
        seen.push(models(&server, &token).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_refusal = seen.iter().position(|s| *s != 200).unwrap_or(seen.len());
    assert!(
        seen[first_refusal..].iter().all(|s| *s == 401),
        "honoured after a refusal: {seen:?}"
    );
    assert_eq!(server.status(submitted.id).await, TaskStatus::Succeeded);
    // At once on the replica that ran the attempt (no cached answer outlives the end there),
    // and for good: the deadline is a minute off.
    assert_attempt_ended(&chat(&server, &token).await, "after success");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_attempt_ended(&chat(&server, &token).await, "after success, later");
    // Elsewhere than the gateway the refusal has Flotilla's shape, with the same code.
    let response = server
        .http
        .get(server.url("/v1/tasks"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "attempt_ended", "{body}");
    server.stop().await;
}

async fn a_retried_attempt_gets_a_new_token_and_the_old_one_is_refused(backend: Backend) {
    let server = TestServer::start(backend, Settings::default().pool(TYPE)).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    agent.push_behaviours([
        Behaviour::Fail { status: 503 },
        Behaviour::Succeed {
            delay: Duration::from_millis(1500),
        },
    ]);
    server.register(&agent, TYPE, 1).await;
    let submitted = server.submit(&submission()).await;
    let (first, first_token) = token_of_call(&agent, 0).await;
    let (second, second_token) = token_of_call(&agent, 1).await;
    assert_eq!((first.attempt, second.attempt), (1, 2));
    assert_ne!(first_token, second_token);

    assert_attempt_ended(&chat(&server, &first_token).await, "the failed attempt");
    let (status, body) = chat(&server, &second_token).await;
    assert_eq!(status, 200, "the running attempt: {body}");
    // Still refused after the second attempt's token was honoured.
    assert_attempt_ended(&chat(&server, &first_token).await, "the failed attempt");

    assert_eq!(
        server.finish(submitted.id).await.status,
        TaskStatus::Succeeded
    );
    assert_attempt_ended(&chat(&server, &second_token).await, "after success");
    server.stop().await;
}

async fn a_cancelled_attempt_has_its_token_refused_at_once(backend: Backend) {
    let server = TestServer::start(backend, Settings::default().pool(TYPE)).await;
    let agent = ScriptedAgent::start(Behaviour::Hang).unwrap();
    server.register(&agent, TYPE, 1).await;
    let submitted = server.submit(&submission()).await;
    let (_, token) = token_of_call(&agent, 0).await;
    assert_eq!(chat(&server, &token).await.0, 200);

    let cancelled = server.client.cancel_task(submitted.id).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    // The agent still runs it (nobody stops a hanging agent), but may no longer spend.
    assert_eq!(agent.in_flight(), 1);
    assert_attempt_ended(&chat(&server, &token).await, "after cancellation");
    agent.stop();
    server.stop().await;
}

/// Settings of replicas that share a master key (task tokens are signed with a key derived from
/// it; PostgreSQL has no embedded key file).
fn replica_settings(dir: &Path) -> Settings {
    let key_file = dir.join("master.key");
    std::fs::write(&key_file, format!("{}\n", "a5".repeat(32))).unwrap();
    Settings::default()
        .raw(&format!(
            "[vault]\nmaster_key_file = \"{}\"\n",
            key_file.display()
        ))
        .pool(TYPE)
        .pool(DYING)
}

/// Polls `replica` with `token` until it is refused; returns when (panics after 5 s). Each
/// honoured call keeps the replica's cached answer fresh, as a busy agent would.
async fn refused_at(replica: &TestServer, token: &str, honoured: &mut usize) -> Instant {
    let started = Instant::now();
    loop {
        match models(replica, token).await {
            200 => *honoured += 1,
            401 => return Instant::now(),
            other => panic!("unexpected status {other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the token was never refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Of two replicas, the one that did not dispatch `request` (the envelope names the gateway of
/// the one that did).
fn not_dispatching<'a>(request: &ExecuteRequest, replicas: [&'a TestServer; 2]) -> &'a TestServer {
    let dispatched_by = &request.model_gateway.as_ref().unwrap().base_url;
    if *dispatched_by == replicas[0].url("/v1") {
        replicas[1]
    } else {
        replicas[0]
    }
}

/// Waits for the agent's `n`-th call (0-based), which it holds for `work`; then polls the
/// replica that did not dispatch it with its token, and asserts that the token was honoured and then refused within a second of the end.
async fn refused_elsewhere_within_a_second(
    agent: &ScriptedAgent,
    n: usize,
    work: Duration,
    replicas: [&TestServer; 2],
) {
    let (request, token) = token_of_call(agent, n).await;
    let arrived = agent.received()[n].received_at;
    let ends_in = (arrived + chrono::Duration::from_std(work).unwrap() - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    let ended = Instant::now() + ends_in;
    let other = not_dispatching(&request, replicas);
    let mut honoured = 0;
    let refused = refused_at(other, &token, &mut honoured).await;
    assert!(honoured > 0, "never honoured while the attempt ran");
    let late = refused.saturating_duration_since(ended);
    assert!(
        late < Duration::from_secs(1),
        "refused {late:?} after the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_ended_on_one_replica_is_refused_on_the_other_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let database = Database::create(Backend::Postgres);
    let settings = replica_settings(dir.path());
    let a = TestServer::start_on(database.location.open().await, settings.clone()).await;
    let b = TestServer::start_on(database.location.open().await, settings).await;
    let agent = ScriptedAgent::start(Behaviour::Hang).unwrap();
    const WORK: Duration = Duration::from_millis(1500);
    agent.push_behaviours([Behaviour::Succeed { delay: WORK }]);
    a.register(&agent, TYPE, 2).await;

    // An attempt that succeeds: the task is done, which the other replica is also told.
    let first = a.submit(&submission()).await;
    refused_elsewhere_within_a_second(&agent, 0, WORK, [&a, &b]).await;
    assert_eq!(a.finish(first.id).await.status, TaskStatus::Succeeded);

    // An attempt whose agent dies long before its deadline: the task is retried (in vain, for
    // a while), so it is not done and nothing tells the other replica; its cached answer lapses
    // within the TTL.
    let dying = ScriptedAgent::start(Behaviour::Hang).unwrap();
    a.register(&dying, DYING, 1).await;
    let orphaned = a
        .submit(&SubmitTask {
            timeout_ms: Some(TIMEOUT_MS),
            max_attempts: Some(100),
            ..task(DYING, json!({"n": 2}))
        })
        .await;
    let (request, token) = token_of_call(&dying, 0).await;
    let other = not_dispatching(&request, [&a, &b]);
    assert_eq!(models(other, &token).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ended = Instant::now();
    dying.stop();
    let mut honoured = 0;
    let late = refused_at(other, &token, &mut honoured)
        .await
        .saturating_duration_since(ended);
    assert!(
        late < Duration::from_secs(1),
        "refused {late:?} after the end"
    );
    let orphaned = a.client.get_task(orphaned.id, None).await.unwrap();
    assert!(!orphaned.status.is_terminal(), "{orphaned:?}");

    // An attempt cancelled through B: A, which had honoured the token, refuses it within a
    // second of the cancellation.
    let second = a.submit(&submission()).await;
    let (_, token) = token_of_call(&agent, 1).await;
    assert_eq!(models(&a, &token).await, 200);
    assert_eq!(models(&b, &token).await, 200);
    let cancelled_at = Instant::now();
    b.client.cancel_task(second.id).await.unwrap();
    let mut honoured = 0;
    let late = refused_at(&a, &token, &mut honoured)
        .await
        .saturating_duration_since(cancelled_at);
    assert!(
        late < Duration::from_secs(1),
        "refused {late:?} after the cancellation"
    );

    agent.stop();
    a.stop().await;
    b.stop().await;
    database.remove().await;
}
