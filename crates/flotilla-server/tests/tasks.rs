//! The task path as a client sees it (docs/design.md §4), on SQLite and on PostgreSQL: submit, run on
//! an agent, long-poll, idempotency, lists, cancellation, priorities and tenant isolation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_client::ListTasks;
use flotilla_core::auth::Role;
use flotilla_core::id::{TaskId, TenantId};
use flotilla_core::task::{Task, TaskStatus};
use flotilla_testkit::{Behaviour, ScriptedAgent};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::{ADMIN_KEY, Backend, Settings, TestServer, eventually, task};

on_both_backends!(
    a_submitted_task_runs_on_an_agent_and_succeeds_with_its_output,
    a_long_poll_returns_as_soon_as_the_task_finishes,
    an_idempotency_key_returns_the_same_task,
    concurrent_submissions_with_one_key_create_one_task,
    lists_filter_by_status_and_type_and_page_newest_first,
    cancelling_a_queued_task_cancels_it_once,
    cancelling_a_running_task_discards_its_late_result,
    higher_priority_tasks_are_dispatched_first,
    tasks_are_invisible_to_other_tenants,
    any_json_input_is_stored_without_failing_other_submissions,
);

/// A type whose tasks run on the scripted agents of each test.
const ECHO: &str = "echo";
/// A configured type without instances: its tasks stay queued.
const IDLE: &str = "idle";

async fn server(backend: Backend) -> TestServer {
    TestServer::start(backend, Settings::default().pool(ECHO).pool(IDLE)).await
}

/// `POST /v1/tasks` with the raw client: status, `idempotent-replayed` header and the task.
async fn post_task(
    server: &TestServer,
    body: &Value,
    idempotency_header: Option<&str>,
) -> (u16, bool, Task) {
    let mut request = server
        .http
        .post(server.url("/v1/tasks"))
        .bearer_auth(ADMIN_KEY)
        .json(body);
    if let Some(key) = idempotency_header {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let text = response.text().await.unwrap();
    let task = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text}: {e}"));
    (status, replayed, task)
}

async fn a_submitted_task_runs_on_an_agent_and_succeeds_with_its_output(backend: Backend) {
    let server = server(backend).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let agent_id = server.register(&agent, ECHO, 2).await;
    // A type's dispatcher looks at the queue once when it starts; until it has, a submission
    // is queued rather than claimed at once. One task run first makes the fast path below
    // deterministic.
    let (_, _, warm_up) = post_task(&server, &json!({"agent_type": ECHO, "input": {}}), None).await;
    server.finish(warm_up.id).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let response = server
        .http
        .post(server.url("/v1/tasks"))
        .bearer_auth(ADMIN_KEY)
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .json(&json!({"agent_type": ECHO, "input": {"prompt": "hello"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Task = response.json().await.unwrap();
    // An instance had a free slot and nothing was queued: claimed as it was stored.
    assert_eq!(
        (accepted.status, accepted.attempt),
        (TaskStatus::Running, 1)
    );
    assert_eq!(accepted.trace_id.as_deref(), Some(trace));

    let done = server.finish(accepted.id).await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    assert_eq!(done.attempt, 1);
    assert_eq!(
        done.output,
        Some(
            json!({"scripted": true, "task_id": accepted.id, "attempt": 1, "input": {"prompt": "hello"}})
        )
    );
    assert_eq!(done.agent_id, Some(agent_id));
    assert!(done.error.is_none() && done.finished_at.is_some());
    assert_eq!(done.attempts.len(), 1);
    assert_eq!(
        (done.attempts[0].number, done.attempts[0].outcome.as_str()),
        (1, "succeeded")
    );
    assert_eq!(done.attempts[0].agent_id, Some(agent_id));

    // The agent got the contract's envelope and the caller's trace.
    let calls = agent.received();
    assert_eq!(calls.len(), 2);
    let call = &calls[1];
    assert_eq!(
        (call.request.task_id, call.request.attempt),
        (accepted.id, 1)
    );
    assert_eq!(
        (call.request.agent_type.as_str(), &call.request.input),
        (ECHO, &json!({"prompt": "hello"}))
    );
    assert!(call.request.deadline > accepted.created_at);
    let traceparent = call
        .headers
        .iter()
        .find(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.as_str());
    assert!(
        traceparent.is_some_and(|tp| tp.contains(trace)),
        "traceparent {traceparent:?}"
    );
    server.stop().await;
}

async fn a_long_poll_returns_as_soon_as_the_task_finishes(backend: Backend) {
    let server = server(backend).await;
    let agent = ScriptedAgent::start(Behaviour::Succeed {
        delay: Duration::from_millis(300),
    })
    .unwrap();
    server.register(&agent, ECHO, 1).await;
    let submitted = server.submit(&task(ECHO, json!({}))).await;
    let started = Instant::now();
    let polled = server
        .client
        .get_task(submitted.id, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(
        polled.status,
        TaskStatus::Succeeded,
        "the poll returns the finished task: {polled:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "returned after {:?}",
        started.elapsed()
    );

    // A task that does not finish: the poll returns its current state when the wait is over.
    let queued = server.submit(&task(IDLE, json!({}))).await;
    let started = Instant::now();
    let polled = server
        .client
        .get_task(queued.id, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(polled.status, TaskStatus::Queued);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "waited only {:?}",
        started.elapsed()
    );
    server.stop().await;
}

async fn an_idempotency_key_returns_the_same_task(backend: Backend) {
    let server = server(backend).await;
    // In the body.
    let body = json!({"agent_type": IDLE, "input": {"n": 1}, "idempotency_key": "order-1"});
    let (status, replayed, first) = post_task(&server, &body, None).await;
    assert_eq!((status, replayed), (202, false));
    let (status, replayed, again) = post_task(&server, &body, None).await;
    assert_eq!((status, replayed, again.id), (200, true, first.id));
    assert_eq!(again.idempotency_key.as_deref(), Some("order-1"));

    // In the header; the same key in the body finds the same task.
    let body = json!({"agent_type": IDLE, "input": {"n": 2}});
    let (status, _, second) = post_task(&server, &body, Some("order-2")).await;
    assert_eq!(status, 202);
    assert_ne!(second.id, first.id);
    let (status, _, again) = post_task(&server, &body, Some("order-2")).await;
    assert_eq!((status, again.id), (200, second.id));
    let in_body = json!({"agent_type": IDLE, "input": {"n": 2}, "idempotency_key": "order-2"});
    let (status, _, again) = post_task(&server, &in_body, None).await;
    assert_eq!((status, again.id), (200, second.id));

    // A replay shows the task as it is now.
    server.client.cancel_task(first.id).await.unwrap();
    let (_, _, replay) = post_task(
        &server,
        &json!({"agent_type": IDLE, "idempotency_key": "order-1"}),
        None,
    )
    .await;
    assert_eq!(
        (replay.id, replay.status),
        (first.id, TaskStatus::Cancelled)
    );
    let page = server
        .client
        .list_tasks(&ListTasks::default())
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 2, "replays created nothing");
    server.stop().await;
}

async fn concurrent_submissions_with_one_key_create_one_task(backend: Backend) {
    let server = server(backend).await;
    let body = json!({"agent_type": IDLE, "idempotency_key": "same-key"});
    let answers = futures::future::join_all((0..12).map(|_| post_task(&server, &body, None))).await;
    let created = answers
        .iter()
        .filter(|(status, _, _)| *status == 202)
        .count();
    let replayed = answers
        .iter()
        .filter(|(status, replayed, _)| *status == 200 && *replayed)
        .count();
    assert_eq!(
        (created, replayed),
        (1, 11),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    let ids: HashSet<TaskId> = answers.iter().map(|(_, _, task)| task.id).collect();
    assert_eq!(ids.len(), 1);
    server.stop().await;
}

async fn lists_filter_by_status_and_type_and_page_newest_first(backend: Backend) {
    let server = TestServer::start(backend, Settings::default().pool("alpha").pool("beta")).await;
    let mut alpha = Vec::new();
    let mut beta = Vec::new();
    for i in 0..10 {
        let agent_type = if i % 3 == 2 { "beta" } else { "alpha" };
        let id = server.submit(&task(agent_type, json!({"i": i}))).await.id;
        if agent_type == "alpha" {
            alpha.push(id)
        } else {
            beta.push(id)
        }
    }
    let cancelled = [alpha[1], alpha[4]];
    for id in cancelled {
        server.client.cancel_task(id).await.unwrap();
    }

    // All of alpha, three at a time.
    let mut seen = Vec::new();
    let mut filter = ListTasks {
        agent_type: Some("alpha".into()),
        limit: Some(3),
        ..ListTasks::default()
    };
    let mut pages = 0;
    loop {
        let page = server.client.list_tasks(&filter).await.unwrap();
        pages += 1;
        assert!(page.tasks.len() <= 3);
        assert!(
            page.tasks
                .iter()
                .all(|t| t.agent_type == "alpha" && t.attempts.is_empty())
        );
        seen.extend(page.tasks.iter().map(|t| t.id));
        match page.next_cursor {
            Some(cursor) => filter.cursor = Some(cursor),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    let newest_first: Vec<TaskId> = alpha.iter().rev().copied().collect();
    assert_eq!(seen, newest_first, "every alpha task once, newest first");
    assert_eq!(pages, 3);

    let by_status = |status| ListTasks {
        status: Some(status),
        ..ListTasks::default()
    };
    assert_eq!(
        list(&server, by_status(TaskStatus::Cancelled)).await,
        vec![cancelled[1], cancelled[0]]
    );
    let queued_alpha = ListTasks {
        agent_type: Some("alpha".into()),
        ..by_status(TaskStatus::Queued)
    };
    let expected: Vec<TaskId> = newest_first
        .iter()
        .filter(|id| !cancelled.contains(id))
        .copied()
        .collect();
    assert_eq!(list(&server, queued_alpha).await, expected);
    let only_beta = ListTasks {
        agent_type: Some("beta".into()),
        ..ListTasks::default()
    };
    assert_eq!(
        list(&server, only_beta).await,
        beta.iter().rev().copied().collect::<Vec<_>>()
    );
    let everything = list(
        &server,
        ListTasks {
            limit: Some(500),
            ..ListTasks::default()
        },
    )
    .await;
    assert_eq!(everything.len(), 10);
    assert!(everything.windows(2).all(|w| w[0] > w[1]), "newest first");
    assert!(
        list(&server, by_status(TaskStatus::Succeeded))
            .await
            .is_empty()
    );
    server.stop().await;
}

async fn cancelling_a_queued_task_cancels_it_once(backend: Backend) {
    let server = server(backend).await;
    let submitted = server.submit(&task(ECHO, json!({}))).await;
    let cancelled = server.client.cancel_task(submitted.id).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert!(cancelled.finished_at.is_some());
    let again = server.client.cancel_task(submitted.id).await.unwrap_err();
    assert_eq!(
        (again.status(), again.code()),
        (Some(409), Some("conflict"))
    );
    let started = Instant::now();
    let polled = server
        .client
        .get_task(submitted.id, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(polled.status, TaskStatus::Cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a finished task's long-poll returns at once"
    );

    // An instance that arrives later never gets the cancelled task.
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    server.register(&agent, ECHO, 1).await;
    let later = server.submit(&task(ECHO, json!({}))).await;
    assert_eq!(server.finish(later.id).await.status, TaskStatus::Succeeded);
    assert_eq!(agent.calls_for(submitted.id), 0);
    assert_eq!(server.status(submitted.id).await, TaskStatus::Cancelled);
    server.stop().await;
}

async fn cancelling_a_running_task_discards_its_late_result(backend: Backend) {
    let server = server(backend).await;
    let agent = ScriptedAgent::start(Behaviour::Succeed {
        delay: Duration::from_millis(600),
    })
    .unwrap();
    server.register(&agent, ECHO, 1).await;
    let submitted = server.submit(&task(ECHO, json!({}))).await;
    assert!(agent.wait_for_calls(1, Duration::from_secs(5)).await);
    let cancelled = server.client.cancel_task(submitted.id).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    // The agent answers later; its attempt is recorded, the task stays cancelled.
    eventually(
        "the late attempt is recorded",
        Duration::from_secs(5),
        || async {
            !server
                .client
                .get_task(submitted.id, None)
                .await
                .unwrap()
                .attempts
                .is_empty()
        },
    )
    .await;
    let after = server.client.get_task(submitted.id, None).await.unwrap();
    assert_eq!(after.status, TaskStatus::Cancelled, "{after:?}");
    assert_eq!(after.output, None);
    server.stop().await;
}

async fn higher_priority_tasks_are_dispatched_first(backend: Backend) {
    let server = server(backend).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    agent.push_behaviours([Behaviour::Succeed {
        delay: Duration::from_millis(600),
    }]);
    server.register(&agent, ECHO, 1).await;
    let first = server.submit(&task(ECHO, json!({"name": "first"}))).await;
    assert!(
        agent.wait_for_calls(1, Duration::from_secs(5)).await,
        "the first task keeps the only slot busy"
    );
    let mut queued = Vec::new();
    for (name, priority) in [("low", 1), ("mid-a", 5), ("high", 9), ("mid-b", 5)] {
        let submitted = server
            .submit(&task(ECHO, json!({"name": name})).with_priority(priority))
            .await;
        queued.push(submitted.id);
    }
    for id in &queued {
        assert_eq!(server.finish(*id).await.status, TaskStatus::Succeeded);
    }
    let order: Vec<String> = agent
        .requests()
        .iter()
        .map(|r| r.input["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        order,
        ["first", "high", "mid-a", "mid-b", "low"],
        "priority first, then age"
    );
    assert_eq!(agent.calls_for(first.id), 1);
    server.stop().await;
}

async fn tasks_are_invisible_to_other_tenants(backend: Backend) {
    let server = server(backend).await;
    let other_tenant = TenantId::from_uuid(uuid::Uuid::new_v4());
    let other = server.client_with(&server.create_key(Role::Submitter, other_tenant).await);
    let ours = server
        .submit(&task(IDLE, json!({})).with_idempotency_key("shared"))
        .await;

    let not_found = other.get_task(ours.id, None).await.unwrap_err();
    assert_eq!(not_found.status(), Some(404));
    assert_eq!(
        other.cancel_task(ours.id).await.unwrap_err().status(),
        Some(404)
    );
    assert!(
        other
            .list_tasks(&ListTasks::default())
            .await
            .unwrap()
            .tasks
            .is_empty()
    );
    // Idempotency keys are per tenant.
    let theirs = other
        .submit_task(&task(IDLE, json!({})).with_idempotency_key("shared"))
        .await
        .unwrap();
    assert_ne!(theirs.id, ours.id);
    assert_eq!(theirs.tenant_id, other_tenant);
    let our_list = server
        .client
        .list_tasks(&ListTasks::default())
        .await
        .unwrap();
    assert_eq!(
        our_list.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ours.id]
    );
    assert_eq!(server.status(ours.id).await, TaskStatus::Queued);
    server.stop().await;
}

async fn any_json_input_is_stored_without_failing_other_submissions(backend: Backend) {
    let server = server(backend).await;
    // Inputs are free-form JSON handed to the agent as is, whatever their strings contain.
    let unusual = json!({
        "nul": "before\u{0000}after",
        "unicode": "naïve 🚀 \u{2028}",
        "big": u64::MAX,
        "negative": i64::MIN,
        "float": 1.5e300,
        "nested": [[[{"a": null}]]],
        "empty": {},
    });
    let plain = |i: usize| json!({"agent_type": IDLE, "input": {"i": i}});
    let odd = json!({"agent_type": IDLE, "input": unusual});
    // Sent together, so group commit may write them in one transaction.
    let mut bodies: Vec<Value> = (0..8).map(plain).collect();
    bodies.insert(4, odd);
    let send = |body: Value| {
        let request = server
            .http
            .post(server.url("/v1/tasks"))
            .bearer_auth(ADMIN_KEY)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let answers = futures::future::join_all(bodies.into_iter().map(send)).await;
    for (i, (status, body)) in answers.iter().enumerate() {
        if i == 4 {
            // Either stored as is, or refused naming the input; never a server error.
            match status {
                202 => {
                    let id: TaskId = body["id"].as_str().unwrap().parse().unwrap();
                    let stored = server.client.get_task(id, None).await.unwrap();
                    assert_eq!(stored.input, unusual, "the input round-trips exactly");
                }
                _ => assert_eq!(
                    (status, &body["error"]["field"]),
                    (&400, &json!("input")),
                    "{body}"
                ),
            }
        } else {
            assert_eq!(
                *status, 202,
                "an ordinary submission sent beside the unusual one: {body}"
            );
        }
    }
    server.stop().await;
}

/// The ids of one page of `GET /v1/tasks`.
async fn list(server: &TestServer, filter: ListTasks) -> Vec<TaskId> {
    server
        .client
        .list_tasks(&filter)
        .await
        .unwrap()
        .tasks
        .into_iter()
        .map(|t| t.id)
        .collect()
}

/// Builders the wire type does not have.
trait SubmitExt {
    fn with_priority(self, priority: i32) -> Self;
    fn with_idempotency_key(self, key: &str) -> Self;
}

impl SubmitExt for flotilla_core::wire::SubmitTask {
    fn with_priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    fn with_idempotency_key(mut self, key: &str) -> Self {
        self.idempotency_key = Some(key.to_owned());
        self
    }
}
