//! One behaviour suite for every `Store`: each behaviour is written once, as a function of the
//! store, and runs against SQLite (a file in a temporary directory) and PostgreSQL (a schema of
//! its own in the database named by `FLOTILLA_TEST_POSTGRES_URL`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use chrono::{Duration, TimeZone, Utc};
use flotilla_core::Timestamp;
use flotilla_core::agent::{AgentInstance, AgentStatus};
use flotilla_core::auth::{ApiKeyRecord, Role};
use flotilla_core::event::{Event, EventKind, NewEvent};
use flotilla_core::id::{AgentId, TaskId, TenantId};
use flotilla_core::task::{AttemptEnd, AttemptResult, NewTask, Task, TaskStatus};
use flotilla_store::{Cancelled, DynStore, EventFilter, Inserted, TaskFilter};
use serde_json::json;
use std::collections::HashSet;
use support::{Backend, next_id, truncate};

behaviours!(
    migrations_are_idempotent_and_ready,
    tasks_round_trip_every_field,
    idempotency_keys_return_the_existing_task_per_tenant,
    lists_filter_and_page_newest_first,
    claims_follow_priority_then_age_and_respect_not_before,
    claims_take_only_the_tenant_asked_for,
    concurrent_claims_take_each_task_once,
    first_terminal_write_wins,
    finishes_apply_in_one_batch,
    retries_go_back_to_the_queue_until_not_before,
    expired_leases_are_requeued_with_a_lost_attempt,
    cancellation_applies_to_unfinished_tasks_only,
    counts_and_queue_statistics,
    agents_are_registered_updated_and_removed,
    api_keys_and_tenants,
    tasks_claimed_at_insertion_run_under_their_lease,
    events_round_trip_in_order,
    events_follow_the_after_cursor,
    events_without_cursor_are_the_latest,
    events_filter_by_pool_instance_and_kind,
    events_are_read_by_their_tenant_and_the_platform,
    pruning_keeps_the_newest_events,
    a_follower_misses_no_event_of_concurrent_writers,
);

/// A fixed instant with nanoseconds, which the store truncates to microseconds.
fn t0() -> Timestamp {
    Utc.timestamp_opt(1_700_000_000, 123_456_789)
        .single()
        .unwrap()
}

fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

fn new_task(tenant: TenantId, agent_type: &str, priority: i32, created_at: Timestamp) -> NewTask {
    NewTask {
        id: TaskId(next_id()),
        tenant_id: tenant,
        agent_type: agent_type.to_owned(),
        input: json!({"prompt": "hello", "n": 1}),
        priority,
        complexity: None,
        idempotency_key: None,
        timeout_ms: 30_000,
        max_attempts: 3,
        trace_id: None,
        claim: None,
        created_at,
    }
}

async fn insert(store: &DynStore, tasks: Vec<NewTask>) -> Vec<Task> {
    let inserted = store.insert_tasks(&tasks).await.unwrap();
    inserted
        .into_iter()
        .map(|i| match i {
            Inserted::Created(t) => t,
            Inserted::Existing(t) => panic!("task {} already existed", t.id),
        })
        .collect()
}

async fn claim(
    store: &DynStore,
    tenant: TenantId,
    agent_type: &str,
    limit: u32,
    now: Timestamp,
) -> Vec<Task> {
    store
        .claim_tasks(agent_type, tenant, limit, "replica-a", now + secs(30), now)
        .await
        .unwrap()
}

fn succeeded(task: &Task, at: Timestamp) -> AttemptEnd {
    AttemptEnd {
        task_id: task.id,
        attempt: task.attempt,
        agent_id: Some(AgentId(next_id())),
        started_at: at,
        finished_at: at + secs(1),
        result: AttemptResult::Succeeded {
            output: json!({"answer": 42}),
            usage: Some(json!({"tokens": 7})),
        },
    }
}

fn ids(tasks: &[Task]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id).collect()
}

async fn get(store: &DynStore, id: TaskId) -> Task {
    store
        .get_task(None, id)
        .await
        .unwrap()
        .expect("task exists")
}

async fn migrations_are_idempotent_and_ready(store: DynStore) {
    assert!(store.ready().await.unwrap());
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert!(store.ready().await.unwrap());
    assert!(["sqlite", "postgres"].contains(&store.topology().name()));
}

async fn tasks_round_trip_every_field(store: DynStore) {
    let tenant = TenantId(next_id());
    let mut full = new_task(tenant, "summarise", 7, t0());
    full.complexity = Some(0.625);
    full.idempotency_key = Some("key-1".to_owned());
    full.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned());
    full.input = json!({"nested": {"list": [1, 2.5, "three", null, true]}, "unicode": "héllo ✓"});
    let minimal = new_task(tenant, "summarise", 0, t0());

    let created = insert(&store, vec![full.clone(), minimal.clone()]).await;
    let mut expected = full.clone().into_task();
    expected.created_at = truncate(full.created_at);
    expected.updated_at = expected.created_at;
    expected.not_before = expected.created_at;
    assert_eq!(created[0], expected);
    assert_eq!(get(&store, full.id).await, expected);
    assert_eq!(get(&store, minimal.id).await, created[1]);
    assert_eq!(
        store.get_task(Some(tenant), full.id).await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(
        store
            .get_task(Some(TenantId(next_id())), full.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.get_task(None, TaskId(next_id())).await.unwrap(), None);

    // Through a claim and a success, every field the store writes reads back.
    let now = t0() + secs(5);
    let claimed = claim(&store, tenant, "summarise", 1, now).await;
    assert_eq!(ids(&claimed), vec![full.id]);
    let running = &claimed[0];
    assert_eq!(running.status, TaskStatus::Running);
    assert_eq!(running.attempt, 1);
    assert_eq!(running.started_at, Some(truncate(now)));
    assert_eq!(running.updated_at, truncate(now));
    assert!(running.attempts.is_empty());
    assert_eq!(&get(&store, full.id).await, running);

    let end = succeeded(running, now);
    let finished = store
        .finish_attempts(std::slice::from_ref(&end))
        .await
        .unwrap();
    let done = finished[0].clone().expect("applied");
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.output, Some(json!({"answer": 42})));
    assert_eq!(done.usage, Some(json!({"tokens": 7})));
    assert_eq!(done.error, None);
    assert_eq!(done.agent_id, end.agent_id);
    assert_eq!(done.finished_at, Some(truncate(end.finished_at)));
    assert_eq!(done.updated_at, truncate(end.finished_at));
    let attempts = get(&store, done.id).await.attempts;
    assert_eq!(attempts.len(), 1);
    let attempt = &attempts[0];
    assert_eq!(attempt.number, 1);
    assert_eq!(attempt.agent_id, end.agent_id);
    assert_eq!(attempt.started_at, truncate(end.started_at));
    assert_eq!(attempt.finished_at, truncate(end.finished_at));
    assert_eq!(attempt.outcome, "succeeded");
    assert_eq!(attempt.error, None);
    assert_eq!(
        Task {
            attempts: Vec::new(),
            ..get(&store, full.id).await
        },
        done
    );
}

async fn idempotency_keys_return_the_existing_task_per_tenant(store: DynStore) {
    let (a, b) = (TenantId(next_id()), TenantId(next_id()));
    let keyed = |tenant| {
        let mut t = new_task(tenant, "x", 5, t0());
        t.idempotency_key = Some("same".to_owned());
        t
    };
    let first = keyed(a);
    let created = insert(&store, vec![first.clone()]).await;

    // Again, alone and twice in one batch: the first task, unchanged; nothing inserted.
    let again = store.insert_tasks(&[keyed(a), keyed(a)]).await.unwrap();
    assert_eq!(
        again,
        vec![
            Inserted::Existing(created[0].clone()),
            Inserted::Existing(created[0].clone())
        ]
    );

    // Another tenant's identical key and tasks without keys do not conflict.
    let other = store.insert_tasks(&[keyed(b)]).await.unwrap();
    assert!(matches!(&other[0], Inserted::Created(t) if t.tenant_id == b));
    insert(
        &store,
        vec![new_task(a, "x", 5, t0()), new_task(a, "x", 5, t0())],
    )
    .await;

    // A new key and a repeat in the same batch: created, then existing.
    let mut fresh = keyed(a);
    fresh.idempotency_key = Some("fresh".to_owned());
    let mut repeat = keyed(a);
    repeat.idempotency_key = Some("fresh".to_owned());
    let batch = store.insert_tasks(&[fresh.clone(), repeat]).await.unwrap();
    assert!(matches!(&batch[0], Inserted::Created(t) if t.id == fresh.id));
    assert_eq!(batch[1], Inserted::Existing(batch[0].task().clone()));

    let all = store
        .list_tasks(&TaskFilter {
            limit: 100,
            ..TaskFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
}

async fn lists_filter_and_page_newest_first(store: DynStore) {
    let (a, b) = (TenantId(next_id()), TenantId(next_id()));
    let mut tasks = Vec::new();
    for i in 0..25 {
        let tenant = if i % 3 == 0 { b } else { a };
        let agent_type = if i % 2 == 0 { "even" } else { "odd" };
        tasks.push(new_task(tenant, agent_type, 5, t0()));
    }
    let created = insert(&store, tasks).await;
    // Claim some "even" tasks so that statuses differ.
    let running = claim(&store, a, "even", 4, t0() + secs(1)).await;
    assert_eq!(running.len(), 4);

    let newest_first: Vec<TaskId> = created.iter().rev().map(|t| t.id).collect();
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let filter = TaskFilter {
            before,
            limit: 7,
            ..TaskFilter::default()
        };
        let page = store.list_tasks(&filter).await.unwrap();
        assert!(page.len() <= 7);
        assert!(page.iter().all(|t| t.attempts.is_empty()));
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        paged.extend(ids(&page));
    }
    assert_eq!(paged, newest_first);

    let by = |tenant_id, status, agent_type: Option<&str>| TaskFilter {
        tenant_id,
        status,
        agent_type: agent_type.map(str::to_owned),
        before: None,
        limit: 100,
    };
    let expect = |f: &dyn Fn(&Task) -> bool| -> Vec<TaskId> {
        let running_ids: HashSet<TaskId> = ids(&running).into_iter().collect();
        created
            .iter()
            .rev()
            .filter(|t| {
                let mut t = (*t).clone();
                if running_ids.contains(&t.id) {
                    t.status = TaskStatus::Running;
                }
                f(&t)
            })
            .map(|t| t.id)
            .collect()
    };
    let list = |filter: TaskFilter| {
        let store = store.clone();
        async move { ids(&store.list_tasks(&filter).await.unwrap()) }
    };
    assert_eq!(
        list(by(Some(a), None, None)).await,
        expect(&|t| t.tenant_id == a)
    );
    assert_eq!(
        list(by(None, None, Some("odd"))).await,
        expect(&|t| t.agent_type == "odd")
    );
    assert_eq!(
        list(by(None, Some(TaskStatus::Running), None)).await,
        expect(&|t| t.status == TaskStatus::Running)
    );
    assert_eq!(
        list(by(Some(b), Some(TaskStatus::Queued), Some("even"))).await,
        expect(&|t| t.tenant_id == b && t.status == TaskStatus::Queued && t.agent_type == "even")
    );
    let page = list(TaskFilter {
        tenant_id: Some(a),
        before: Some(created[10].id),
        limit: 3,
        ..TaskFilter::default()
    })
    .await;
    let tail: Vec<TaskId> = expect(&|t| t.tenant_id == a && t.id < created[10].id)
        .into_iter()
        .take(3)
        .collect();
    assert_eq!(page, tail);
    assert!(
        list(by(Some(TenantId(next_id())), None, None))
            .await
            .is_empty()
    );
}

async fn claims_follow_priority_then_age_and_respect_not_before(store: DynStore) {
    let tenant = TenantId(next_id());
    let old_low = new_task(tenant, "w", 1, t0());
    let old_high = new_task(tenant, "w", 9, t0());
    let new_high = new_task(tenant, "w", 9, t0());
    let mid = new_task(tenant, "w", 5, t0());
    let later = new_task(tenant, "w", 9, t0() + secs(60)); // not_before = created_at, in the future
    let other_type = new_task(tenant, "other", 9, t0());
    insert(
        &store,
        vec![
            old_low.clone(),
            old_high.clone(),
            new_high.clone(),
            mid.clone(),
            later.clone(),
            other_type,
        ],
    )
    .await;

    let now = t0() + secs(1);
    assert!(claim(&store, tenant, "w", 0, now).await.is_empty());
    let first = claim(&store, tenant, "w", 2, now).await;
    assert_eq!(ids(&first), vec![old_high.id, new_high.id]);
    assert!(
        first
            .iter()
            .all(|t| t.status == TaskStatus::Running && t.attempt == 1 && t.attempts.is_empty())
    );
    let rest = claim(&store, tenant, "w", 10, now).await;
    assert_eq!(ids(&rest), vec![mid.id, old_low.id]);
    assert!(claim(&store, tenant, "w", 10, now).await.is_empty());
    // Exactly at not_before it becomes claimable.
    let at = truncate(later.created_at);
    assert_eq!(
        ids(&claim(&store, tenant, "w", 10, at).await),
        vec![later.id]
    );
    let lease = get(&store, later.id).await;
    assert_eq!(lease.started_at, Some(at));
    assert!(claim(&store, tenant, "nobody", 10, at).await.is_empty());
}

async fn concurrent_claims_take_each_task_once(store: DynStore) {
    let tenant = TenantId(next_id());
    let tasks: Vec<NewTask> = (0..200)
        .map(|i| new_task(tenant, "busy", i % 10, t0()))
        .collect();
    for chunk in tasks.chunks(50) {
        insert(&store, chunk.to_vec()).await;
    }
    let now = t0() + secs(1);
    let mut claimers = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = store.clone();
        claimers.spawn(async move {
            let owner = format!("replica-{i}");
            let mut mine = Vec::new();
            loop {
                let got = store
                    .claim_tasks("busy", tenant, 7, &owner, now + secs(30), now)
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|t| t.id));
                tokio::task::yield_now().await;
            }
        });
    }
    let mut all = Vec::new();
    while let Some(claimed) = claimers.join_next().await {
        all.extend(claimed.unwrap());
    }
    assert_eq!(all.len(), 200);
    let unique: HashSet<TaskId> = all.iter().copied().collect();
    assert_eq!(unique.len(), 200);
    let counts = store.task_counts_by_status().await.unwrap();
    assert!(counts.contains(&(TaskStatus::Running, 200)));
}

async fn first_terminal_write_wins(store: DynStore) {
    let tenant = TenantId(next_id());
    let (a, b) = (
        new_task(tenant, "w", 5, t0()),
        new_task(tenant, "w", 5, t0()),
    );
    insert(&store, vec![a.clone(), b.clone()]).await;
    let now = t0() + secs(1);
    let claimed = claim(&store, tenant, "w", 2, now).await;
    let (task_a, task_b) = (&claimed[0], &claimed[1]);

    // A stale attempt number is ignored, but its attempt is recorded.
    let mut stale = succeeded(task_a, now);
    stale.attempt = 7;
    assert_eq!(
        store
            .finish_attempts(std::slice::from_ref(&stale))
            .await
            .unwrap(),
        vec![None]
    );
    assert_eq!(get(&store, a.id).await.status, TaskStatus::Running);

    // The first terminal write applies; a second for the same attempt does not.
    let fail = AttemptEnd {
        result: AttemptResult::Terminal {
            status: TaskStatus::Failed,
            error: "agent said 400".to_owned(),
        },
        ..succeeded(task_a, now)
    };
    let applied = store
        .finish_attempts(std::slice::from_ref(&fail))
        .await
        .unwrap();
    let failed = applied[0].clone().expect("applied");
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("agent said 400"));
    assert_eq!(failed.output, None);
    assert_eq!(failed.finished_at, Some(truncate(fail.finished_at)));
    let late = succeeded(task_a, now + secs(2));
    assert_eq!(
        store
            .finish_attempts(std::slice::from_ref(&late))
            .await
            .unwrap(),
        vec![None]
    );
    let stored = get(&store, a.id).await;
    assert_eq!(stored.status, TaskStatus::Failed);
    assert_eq!(stored.output, None);
    // Attempt 1 was recorded once (by the first write), the stale attempt 7 too.
    let attempts: Vec<(i32, &str)> = stored
        .attempts
        .iter()
        .map(|a| (a.number, a.outcome.as_str()))
        .collect();
    assert_eq!(attempts, vec![(1, "failed"), (7, "succeeded")]);
    assert_eq!(stored.attempts[0].error.as_deref(), Some("agent said 400"));

    // A cancelled task is not overwritten by its running attempt's end.
    let cancelled = store.cancel_task(None, b.id, now + secs(1)).await.unwrap();
    assert!(matches!(cancelled, Cancelled::Done(_)));
    let end = succeeded(task_b, now);
    assert_eq!(
        store
            .finish_attempts(std::slice::from_ref(&end))
            .await
            .unwrap(),
        vec![None]
    );
    let stored = get(&store, b.id).await;
    assert_eq!(stored.status, TaskStatus::Cancelled);
    assert_eq!(stored.output, None);
    assert_eq!(stored.attempts.len(), 1);
    assert_eq!(stored.attempts[0].outcome, "succeeded");
}

async fn finishes_apply_in_one_batch(store: DynStore) {
    let tenant = TenantId(next_id());
    let tasks: Vec<NewTask> = (0..6).map(|_| new_task(tenant, "w", 5, t0())).collect();
    insert(&store, tasks).await;
    let now = t0() + secs(1);
    let claimed = claim(&store, tenant, "w", 6, now).await;
    let mut ends: Vec<AttemptEnd> = claimed.iter().map(|t| succeeded(t, now)).collect();
    ends[1].attempt = 2; // stale
    ends[3].result = AttemptResult::Retry {
        error: "503".to_owned(),
        not_before: now + secs(5),
    };
    ends[4].result = AttemptResult::Terminal {
        status: TaskStatus::TimedOut,
        error: "deadline".to_owned(),
    };
    ends.push(succeeded(&claimed[0], now)); // a duplicate of an applied end in the same batch
    let results = store.finish_attempts(&ends).await.unwrap();
    let statuses: Vec<Option<TaskStatus>> = results
        .iter()
        .map(|r| r.as_ref().map(|t| t.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            Some(TaskStatus::Succeeded),
            None,
            Some(TaskStatus::Succeeded),
            Some(TaskStatus::Queued),
            Some(TaskStatus::TimedOut),
            Some(TaskStatus::Succeeded),
            None,
        ]
    );
    for (result, task) in results.iter().zip(&claimed) {
        if let Some(result) = result {
            assert_eq!(result.id, task.id);
            // The hot path returns the task without its attempts; everything else is current.
            let stored = get(&store, task.id).await;
            assert!(!stored.attempts.is_empty());
            assert_eq!(
                result,
                &Task {
                    attempts: Vec::new(),
                    ..stored
                }
            );
        }
    }
    assert_eq!(get(&store, claimed[1].id).await.status, TaskStatus::Running);
    assert!(store.finish_attempts(&[]).await.unwrap().is_empty());
}

async fn retries_go_back_to_the_queue_until_not_before(store: DynStore) {
    let tenant = TenantId(next_id());
    let task = new_task(tenant, "w", 5, t0());
    insert(&store, vec![task.clone()]).await;
    let now = t0() + secs(1);
    let claimed = claim(&store, tenant, "w", 1, now).await;
    let retry_at = now + secs(10);
    let agent = AgentId(next_id());
    let end = AttemptEnd {
        task_id: task.id,
        attempt: 1,
        agent_id: Some(agent),
        started_at: now,
        finished_at: now + secs(1),
        result: AttemptResult::Retry {
            error: "connection refused".to_owned(),
            not_before: retry_at,
        },
    };
    let queued = store.finish_attempts(&[end]).await.unwrap()[0]
        .clone()
        .expect("applied");
    assert_eq!(queued.status, TaskStatus::Queued);
    assert_eq!(queued.error.as_deref(), Some("connection refused"));
    assert_eq!(queued.not_before, truncate(retry_at));
    assert_eq!(queued.agent_id, Some(agent));
    assert_eq!(queued.finished_at, None);
    let attempts = get(&store, queued.id).await.attempts;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, "failed");
    assert_eq!(attempts[0].error.as_deref(), Some("connection refused"));

    assert!(
        claim(&store, tenant, "w", 1, retry_at - secs(1))
            .await
            .is_empty()
    );
    let again = claim(&store, tenant, "w", 1, retry_at).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(
        again[0].started_at, claimed[0].started_at,
        "started_at is kept from the first claim"
    );
    let done = store
        .finish_attempts(&[succeeded(&again[0], retry_at)])
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.error, None);
    let attempts = get(&store, done.id).await.attempts;
    assert_eq!(
        attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

async fn expired_leases_are_requeued_with_a_lost_attempt(store: DynStore) {
    let tenant = TenantId(next_id());
    let (a, b) = (
        new_task(tenant, "w", 5, t0()),
        new_task(tenant, "w", 5, t0()),
    );
    insert(&store, vec![a.clone(), b.clone()]).await;
    let now = t0() + secs(1);
    let mine = store
        .claim_tasks("w", tenant, 1, "replica-a", now + secs(30), now)
        .await
        .unwrap();
    let theirs = store
        .claim_tasks("w", tenant, 1, "replica-b", now + secs(30), now)
        .await
        .unwrap();
    assert_eq!((ids(&mine), ids(&theirs)), (vec![a.id], vec![b.id]));

    assert_eq!(
        store
            .renew_leases("replica-a", now + secs(60))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.renew_leases("nobody", now + secs(60)).await.unwrap(),
        0
    );
    assert!(
        store
            .requeue_expired(now + secs(30), None, 3)
            .await
            .unwrap()
            .is_empty(),
        "not before the lease expires"
    );

    let requeued = store
        .requeue_expired(now + secs(45), None, 3)
        .await
        .unwrap();
    assert_eq!(
        requeued,
        vec![flotilla_store::Requeued {
            task_id: b.id,
            attempt: 1,
            agent_type: "w".to_owned(),
            failed: false,
        }]
    );
    let lost = get(&store, b.id).await;
    assert_eq!(lost.status, TaskStatus::Queued);
    assert_eq!(lost.not_before, truncate(now + secs(45)));
    assert_eq!(
        lost.error.as_deref(),
        Some("lease expired: the control plane that ran attempt 1 stopped")
    );
    assert_eq!(lost.attempts.len(), 1);
    assert_eq!(lost.attempts[0].number, 1);
    assert_eq!(lost.attempts[0].outcome, "lost");
    assert_eq!(lost.attempts[0].started_at, truncate(now));
    assert_eq!(lost.attempts[0].finished_at, truncate(now + secs(45)));

    // Claimable again at once, as attempt 2; the lost attempt's late end is stale.
    let again = claim(&store, tenant, "w", 5, now + secs(45)).await;
    assert_eq!(ids(&again), vec![b.id]);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(
        store
            .finish_attempts(&[succeeded(&theirs[0], now)])
            .await
            .unwrap(),
        vec![None]
    );
    assert_eq!(get(&store, b.id).await.status, TaskStatus::Running);

    // The renewed lease expires later.
    let requeued = store
        .requeue_expired(now + secs(61), None, 3)
        .await
        .unwrap();
    assert_eq!(
        requeued.iter().map(|r| r.task_id).collect::<Vec<_>>(),
        vec![a.id]
    );
}

async fn cancellation_applies_to_unfinished_tasks_only(store: DynStore) {
    let tenant = TenantId(next_id());
    let tasks: Vec<NewTask> = (0..3).map(|_| new_task(tenant, "w", 5, t0())).collect();
    insert(&store, tasks.clone()).await;
    let now = t0() + secs(1);
    let claimed = claim(&store, tenant, "w", 2, now).await; // tasks 0 and 1 run, 2 stays queued
    store
        .finish_attempts(&[succeeded(&claimed[0], now)])
        .await
        .unwrap();

    let at = now + secs(5);
    let Cancelled::Done(queued) = store
        .cancel_task(Some(tenant), tasks[2].id, at)
        .await
        .unwrap()
    else {
        panic!("queued task not cancelled");
    };
    assert_eq!(queued.status, TaskStatus::Cancelled);
    assert_eq!(queued.finished_at, Some(truncate(at)));
    let Cancelled::Done(running) = store.cancel_task(None, tasks[1].id, at).await.unwrap() else {
        panic!("running task not cancelled");
    };
    assert_eq!(running.status, TaskStatus::Cancelled);
    assert_eq!(get(&store, tasks[1].id).await, running);
    // A cancelled task's lease is gone: it never comes back from requeue_expired.
    assert!(
        store
            .requeue_expired(now + secs(3600), None, 3)
            .await
            .unwrap()
            .is_empty()
    );

    let finished = get(&store, tasks[0].id).await;
    assert_eq!(
        store.cancel_task(None, tasks[0].id, at).await.unwrap(),
        Cancelled::AlreadyFinished(finished)
    );
    let again = get(&store, tasks[2].id).await;
    assert_eq!(
        store.cancel_task(None, tasks[2].id, at).await.unwrap(),
        Cancelled::AlreadyFinished(again)
    );
    assert_eq!(
        store
            .cancel_task(Some(TenantId(next_id())), tasks[0].id, at)
            .await
            .unwrap(),
        Cancelled::NotFound
    );
    assert_eq!(
        store
            .cancel_task(None, TaskId(next_id()), at)
            .await
            .unwrap(),
        Cancelled::NotFound
    );
}

async fn counts_and_queue_statistics(store: DynStore) {
    let initial = store.task_counts_by_status().await.unwrap();
    assert_eq!(
        initial,
        TaskStatus::ALL
            .into_iter()
            .map(|s| (s, 0))
            .collect::<Vec<_>>()
    );
    assert!(store.queued_by_type(None).await.unwrap().is_empty());

    let tenant = TenantId(next_id());
    let mut tasks: Vec<NewTask> = (0..5)
        .map(|_| new_task(tenant, "a", 5, t0() + secs(10)))
        .collect();
    tasks.push(new_task(tenant, "a", 5, t0() + secs(3)));
    tasks.extend((0..2).map(|_| new_task(tenant, "b", 5, t0())));
    insert(&store, tasks).await;
    let now = t0() + secs(20);
    let claimed = claim(&store, tenant, "a", 3, now).await;
    store
        .finish_attempts(&[succeeded(&claimed[0], now)])
        .await
        .unwrap();

    let counts = store.task_counts_by_status().await.unwrap();
    let count = |status| counts.iter().find(|(s, _)| *s == status).map(|(_, n)| *n);
    assert_eq!(count(TaskStatus::Queued), Some(5));
    assert_eq!(count(TaskStatus::Running), Some(2));
    assert_eq!(count(TaskStatus::Succeeded), Some(1));
    assert_eq!(count(TaskStatus::Failed), Some(0));

    insert(&store, vec![new_task(TenantId(next_id()), "c", 5, t0())]).await;
    let queued = store.queued_by_type(None).await.unwrap();
    assert_eq!(
        queued.into_iter().collect::<Vec<_>>(),
        vec![
            ("a".to_owned(), 3),
            ("b".to_owned(), 2),
            ("c".to_owned(), 1)
        ]
    );
    // One tenant's queues only.
    let queued = store.queued_by_type(Some(tenant)).await.unwrap();
    assert_eq!(
        queued.into_iter().collect::<Vec<_>>(),
        vec![("a".to_owned(), 3), ("b".to_owned(), 2)]
    );
}

fn agent(agent_type: &str, created_at: Timestamp) -> AgentInstance {
    AgentInstance {
        id: AgentId(next_id()),
        agent_type: agent_type.to_owned(),
        tenant_id: None,
        url: "http://127.0.0.1:9001".to_owned(),
        capacity: 4,
        load: 0,
        weight: u32::MAX,
        status: AgentStatus::Starting,
        version: Some("1.2.3".to_owned()),
        metadata: json!({"zone": "a", "gpu": false}),
        signing_secret: "s3cr3t".to_owned(),
        latency_ms: None,
        success_rate: None,
        last_heartbeat: created_at,
        created_at,
    }
}

/// The dispatcher claims per tenant (fair share, docs/design.md §4; and a tenant's own instance
/// never claims another tenant's task, docs/security.md "Agent trust model"): a claim takes only
/// the tenant asked for, whatever the priorities of others; `queued_tenants` lists the tenants
/// with due work of a type; `count_queued` counts a tenant's queue up to a cap.
async fn claims_take_only_the_tenant_asked_for(store: DynStore) {
    let (a, b, c) = (
        TenantId(next_id()),
        TenantId(next_id()),
        TenantId(next_id()),
    );
    let now = t0();
    let tasks = insert(
        &store,
        vec![
            new_task(b, "scoped", 9, now),
            new_task(a, "scoped", 1, now + secs(1)),
            new_task(c, "scoped", 5, now + secs(2)),
            new_task(b, "scoped", 9, now + secs(3)),
            new_task(c, "other", 5, now),
            // Not due before `now + 60 s`.
            new_task(a, "later", 5, now + secs(60)),
        ],
    )
    .await;
    let later = now + secs(10);
    let mut abc = vec![a, b, c];
    abc.sort();
    assert_eq!(
        store.queued_tenants("scoped", later, 10).await.unwrap(),
        abc
    );
    assert_eq!(
        store.queued_tenants("scoped", later, 2).await.unwrap(),
        abc[..2]
    );
    assert_eq!(
        store.queued_tenants("other", later, 10).await.unwrap(),
        vec![c]
    );
    assert!(
        store
            .queued_tenants("later", later, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .queued_tenants("later", now + secs(61), 10)
            .await
            .unwrap(),
        vec![a]
    );
    assert_eq!(store.count_queued(c, 100).await.unwrap(), 2);
    assert_eq!(
        store.count_queued(c, 1).await.unwrap(),
        1,
        "counted up to the cap"
    );
    assert_eq!(
        store.count_queued(TenantId(next_id()), 100).await.unwrap(),
        0
    );

    let claim_for = |tenant: TenantId| {
        let store = store.clone();
        async move {
            let claimed = store
                .claim_tasks("scoped", tenant, 10, "replica-a", later + secs(30), later)
                .await
                .unwrap();
            claimed.iter().map(|t| t.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(claim_for(a).await, vec![tasks[1].id]);
    assert_eq!(claim_for(c).await, vec![tasks[2].id]);
    assert_eq!(claim_for(b).await, vec![tasks[0].id, tasks[3].id]);
    assert!(claim_for(b).await.is_empty());
    assert!(
        store
            .queued_tenants("scoped", later, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.count_queued(c, 100).await.unwrap(), 1);
}

async fn agents_are_registered_updated_and_removed(store: DynStore) {
    assert!(store.list_agents().await.unwrap().is_empty());
    let first = agent("echo", t0());
    let mut second = agent("sum", t0() + secs(1));
    // The owner survives the round trip: a tenant's instance stays that tenant's.
    second.tenant_id = Some(TenantId(next_id()));
    second.version = None;
    second.metadata = json!({});
    store.insert_agent(&first).await.unwrap();
    store.insert_agent(&second).await.unwrap();
    assert!(store.insert_agent(&first).await.is_err(), "ids are unique");

    let mut expected = first.clone();
    expected.created_at = truncate(first.created_at);
    expected.last_heartbeat = expected.created_at;
    assert_eq!(
        store.get_agent(first.id).await.unwrap(),
        Some(expected.clone())
    );
    let listed: Vec<AgentId> = store
        .list_agents()
        .await
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(listed, vec![first.id, second.id]);

    let beat = t0() + secs(30);
    assert!(
        store
            .heartbeat_agent(first.id, 3, AgentStatus::Busy, beat)
            .await
            .unwrap()
    );
    let stored = store.get_agent(first.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.load, stored.status, stored.last_heartbeat),
        (3, AgentStatus::Busy, truncate(beat))
    );
    assert!(
        store
            .set_agent_status(first.id, AgentStatus::Draining)
            .await
            .unwrap()
    );
    let stored = store.get_agent(first.id).await.unwrap().unwrap();
    assert_eq!((stored.load, stored.status), (3, AgentStatus::Draining));

    let missing = AgentId(next_id());
    assert!(
        !store
            .heartbeat_agent(missing, 0, AgentStatus::Idle, beat)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_agent_status(missing, AgentStatus::Failed)
            .await
            .unwrap()
    );
    assert!(store.delete_agent(first.id).await.unwrap());
    assert!(!store.delete_agent(first.id).await.unwrap());
    assert_eq!(store.get_agent(first.id).await.unwrap(), None);
    assert_eq!(store.list_agents().await.unwrap().len(), 1);
}

async fn api_keys_and_tenants(store: DynStore) {
    let tenant = TenantId(next_id());
    store.ensure_tenant(tenant, "acme", t0()).await.unwrap();
    store
        .ensure_tenant(tenant, "acme again", t0())
        .await
        .unwrap();
    store
        .ensure_tenant(TenantId::DEFAULT, "default", t0())
        .await
        .unwrap();
    assert_eq!(store.count_api_keys().await.unwrap(), 0);

    let key = ApiKeyRecord {
        id: "abc123".to_owned(),
        tenant_id: tenant,
        role: Role::Submitter,
        name: "ci".to_owned(),
        secret_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
        created_at: t0(),
        expires_at: Some(t0() + secs(86_400)),
        revoked_at: None,
        rate_limit: Some("10/s".parse().unwrap()),
    };
    store.insert_api_key(&key).await.unwrap();
    let mut admin = key.clone();
    admin.id = "admin1".to_owned();
    admin.role = Role::Admin;
    admin.expires_at = None;
    admin.revoked_at = Some(t0() + secs(5));
    store.insert_api_key(&admin).await.unwrap();
    assert!(
        store.insert_api_key(&key).await.is_err(),
        "key ids are unique"
    );

    let mut expected = key.clone();
    expected.created_at = truncate(key.created_at);
    expected.expires_at = key.expires_at.map(truncate);
    assert_eq!(store.get_api_key("abc123").await.unwrap(), Some(expected));
    let stored = store.get_api_key("admin1").await.unwrap().unwrap();
    assert_eq!(
        (stored.role, stored.expires_at, stored.revoked_at),
        (Role::Admin, None, Some(truncate(t0() + secs(5))))
    );
    assert_eq!(store.get_api_key("nope").await.unwrap(), None);
    assert_eq!(store.count_api_keys().await.unwrap(), 2);
}

async fn tasks_claimed_at_insertion_run_under_their_lease(store: DynStore) {
    let tenant = TenantId(next_id());
    let now = chrono::Utc::now();
    let mut claimed = new_task(tenant, "direct", 5, now);
    claimed.claim = Some(flotilla_core::task::Lease {
        owner: "me".to_owned(),
        expires_at: now + secs(10),
    });
    let queued = new_task(tenant, "direct", 5, now);
    let inserted = insert(&store, vec![claimed.clone(), queued.clone()]).await;
    assert_eq!(
        (inserted[0].status, inserted[0].attempt),
        (TaskStatus::Running, 1)
    );
    assert_eq!(inserted[0].started_at, Some(truncate(now)));
    assert_eq!(inserted[1].status, TaskStatus::Queued);
    let stored = get(&store, claimed.id).await;
    assert_eq!(
        (stored.status, stored.attempt, stored.started_at),
        (TaskStatus::Running, 1, Some(truncate(now)))
    );

    // Only the queued one can be claimed; the other is under its lease.
    let taken = store
        .claim_tasks("direct", tenant, 10, "other", now + secs(10), now)
        .await
        .unwrap();
    assert_eq!(
        taken.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![queued.id]
    );
    assert_eq!(store.renew_leases("me", now + secs(20)).await.unwrap(), 1);
    // When its owner dies, the lease expires and the task returns to the queue.
    let requeued = store
        .requeue_expired(now + secs(30), None, 3)
        .await
        .unwrap();
    assert!(
        requeued
            .iter()
            .any(|r| r.task_id == claimed.id && r.attempt == 1)
    );
    assert_eq!(get(&store, claimed.id).await.status, TaskStatus::Queued);
}

/// The `n`th event of a test: `n` seconds after [`t0`].
fn event(kind: EventKind, agent_type: &str, agent_id: Option<AgentId>, n: i64) -> NewEvent {
    NewEvent {
        at: t0() + secs(n),
        kind,
        agent_type: agent_type.to_owned(),
        agent_id,
        message: format!("event {n}: pool {agent_type} 3 → 5, utilisation 0.91 > 0.80"),
        tenant: None,
    }
}

/// Events of the scale kind for pool `p`, numbered `from..to`.
fn scale_events(from: i64, to: i64) -> Vec<NewEvent> {
    (from..to)
        .map(|n| event(EventKind::Scale, "p", None, n))
        .collect()
}

/// Asserts that `listed` is `expected` as stored: the same fields (timestamps in microseconds),
/// in order, with increasing ids.
fn assert_stored(listed: &[Event], expected: &[NewEvent]) {
    assert_eq!(listed.len(), expected.len(), "{listed:#?}");
    assert!(listed.windows(2).all(|w| w[0].id < w[1].id), "{listed:#?}");
    for (event, new) in listed.iter().zip(expected) {
        let stored = Event {
            id: event.id,
            at: truncate(new.at),
            kind: new.kind,
            agent_type: new.agent_type.clone(),
            agent_id: new.agent_id,
            message: new.message.clone(),
            tenant: new.tenant,
        };
        assert_eq!(event, &stored);
    }
}

fn messages(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.message.as_str()).collect()
}

async fn all_events(store: &DynStore) -> Vec<Event> {
    store
        .list_events(&EventFilter {
            limit: 1000,
            ..EventFilter::default()
        })
        .await
        .unwrap()
}

async fn events_round_trip_in_order(store: DynStore) {
    assert!(all_events(&store).await.is_empty());
    store.insert_events(&[]).await.unwrap();

    // An instance that was registered and removed, and one that never was: events outlive
    // instances, so neither is refused.
    let removed = agent("echo", t0());
    store.insert_agent(&removed).await.unwrap();
    assert!(store.delete_agent(removed.id).await.unwrap());
    let unknown = AgentId(next_id());
    let mut first = vec![
        event(EventKind::Instance, "echo", Some(removed.id), 0),
        event(EventKind::Scale, "echo", None, 1),
        event(EventKind::Provisioner, "echo", Some(unknown), 2),
    ];
    first[2].message = "restarted: exit code 137 (killed) — \"oom\"\nretry in 5s ✓".to_owned();
    // Earlier timestamps than the first batch: the order is the order of recording.
    let second = vec![
        event(EventKind::Instance, "sum", Some(unknown), -10),
        event(EventKind::Scale, "sum", None, -20),
    ];
    store.insert_events(&first).await.unwrap();
    store.insert_events(&second).await.unwrap();

    let listed = all_events(&store).await;
    assert_stored(&listed, &[first, second].concat());
    assert_eq!(listed[0].agent_id, Some(removed.id));
    assert!(store.get_agent(unknown).await.unwrap().is_none());
}

async fn events_follow_the_after_cursor(store: DynStore) {
    let all = scale_events(0, 10);
    for batch in [&all[..1], &all[1..6], &all[6..]] {
        store.insert_events(batch).await.unwrap();
    }
    let first_id = all_events(&store).await[0].id;

    // Pages of 3 from before the first event read everything once, in order.
    let mut followed = Vec::new();
    let mut after = first_id - 1;
    loop {
        let page = store
            .list_events(&EventFilter {
                after: Some(after),
                limit: 3,
                ..EventFilter::default()
            })
            .await
            .unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        assert!(page.iter().all(|e| e.id > after));
        after = last.id;
        followed.extend(page);
    }
    assert_stored(&followed, &all);

    // Followed further, the cursor yields exactly the events recorded since.
    let later = scale_events(10, 12);
    store.insert_events(&later).await.unwrap();
    let next = store
        .list_events(&EventFilter {
            after: Some(after),
            limit: 100,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_stored(&next, &later);
    let cursor = next.last().unwrap().id;
    let after_last = EventFilter {
        after: Some(cursor),
        limit: 100,
        ..EventFilter::default()
    };
    assert!(store.list_events(&after_last).await.unwrap().is_empty());

    // A cursor in the middle starts right after it.
    let middle = EventFilter {
        after: Some(followed[4].id),
        limit: 2,
        ..EventFilter::default()
    };
    assert_stored(&store.list_events(&middle).await.unwrap(), &all[5..7]);
}

async fn events_without_cursor_are_the_latest(store: DynStore) {
    let all = scale_events(0, 10);
    store.insert_events(&all[..7]).await.unwrap();
    store.insert_events(&all[7..]).await.unwrap();
    let latest = |limit| {
        let store = store.clone();
        async move {
            store
                .list_events(&EventFilter {
                    limit,
                    ..EventFilter::default()
                })
                .await
                .unwrap()
        }
    };
    assert_stored(&latest(4).await, &all[6..]);
    assert_stored(&latest(1).await, &all[9..]);
    assert_stored(&latest(10).await, &all);
    assert_stored(&latest(50).await, &all);
    assert!(latest(0).await.is_empty());
}

async fn events_filter_by_pool_instance_and_kind(store: DynStore) {
    let (x, y) = (AgentId(next_id()), AgentId(next_id()));
    let kinds = [
        EventKind::Instance,
        EventKind::Provisioner,
        EventKind::Scale,
    ];
    let all: Vec<NewEvent> = (0..24)
        .map(|n| {
            let agent_type = if n % 2 == 0 { "a" } else { "b" };
            let agent_id = [Some(x), Some(y), None][(n % 3) as usize];
            event(kinds[(n % 4 % 3) as usize], agent_type, agent_id, n)
        })
        .collect();
    store.insert_events(&all).await.unwrap();
    let stored = all_events(&store).await;
    assert_stored(&stored, &all);

    let expect = |f: &dyn Fn(&Event) -> bool| -> Vec<Event> {
        stored.iter().filter(|e| f(e)).cloned().collect()
    };
    let list = |filter: EventFilter| {
        let store = store.clone();
        async move { store.list_events(&filter).await.unwrap() }
    };
    let by = |agent_type: Option<&str>, agent_id, kind| EventFilter {
        agent_type: agent_type.map(str::to_owned),
        agent_id,
        kind,
        readable_by: None,
        after: None,
        limit: 100,
    };
    assert_eq!(
        list(by(Some("a"), None, None)).await,
        expect(&|e| e.agent_type == "a")
    );
    assert_eq!(
        list(by(None, Some(y), None)).await,
        expect(&|e| e.agent_id == Some(y))
    );
    assert_eq!(
        list(by(None, None, Some(EventKind::Scale))).await,
        expect(&|e| e.kind == EventKind::Scale)
    );
    let combined = expect(&|e| {
        e.agent_type == "b" && e.agent_id == Some(x) && e.kind == EventKind::Provisioner
    });
    assert!(!combined.is_empty());
    assert_eq!(
        list(by(Some("b"), Some(x), Some(EventKind::Provisioner))).await,
        combined
    );
    assert!(
        list(by(Some("c"), None, None)).await.is_empty(),
        "no such pool"
    );
    assert!(
        list(by(None, Some(AgentId(next_id())), None))
            .await
            .is_empty(),
        "no such instance"
    );

    // Filters apply before the limit, with or without a cursor.
    let of_a = expect(&|e| e.agent_type == "a");
    let latest = list(EventFilter {
        limit: 3,
        ..by(Some("a"), None, None)
    })
    .await;
    assert_eq!(latest, of_a[of_a.len() - 3..]);
    let after = list(EventFilter {
        after: Some(of_a[2].id),
        limit: 2,
        ..by(Some("a"), None, None)
    })
    .await;
    assert_eq!(after, of_a[3..5]);
    assert_eq!(messages(&after), messages(&of_a[3..5]));
}

/// A tenant reads the fleet's facts and its own events, never another tenant's or the
/// platform's; the filter applies before the limit and the cursor.
async fn events_are_read_by_their_tenant_and_the_platform(store: DynStore) {
    let (a, b) = (TenantId(next_id()), TenantId(next_id()));
    let owners = [None, Some(a), Some(b), flotilla_core::event::PLATFORM];
    let all: Vec<NewEvent> = (0..16)
        .map(|n| NewEvent {
            tenant: owners[(n % 4) as usize],
            ..event(EventKind::Budget, "", None, n)
        })
        .collect();
    store.insert_events(&all).await.unwrap();
    let stored = all_events(&store).await;
    assert_stored(&stored, &all);
    for reader in [a, b, TenantId::DEFAULT] {
        let read = store
            .list_events(&EventFilter {
                readable_by: Some(reader),
                limit: 100,
                ..EventFilter::default()
            })
            .await
            .unwrap();
        let readable: Vec<NewEvent> = all
            .iter()
            .filter(|e| flotilla_core::event::visible_to(e.tenant, reader))
            .cloned()
            .collect();
        assert_eq!(readable.len(), 8, "the fleet's and its own");
        assert_stored(&read, &readable);
    }
    let of_a = |after, limit| EventFilter {
        readable_by: Some(a),
        after,
        limit,
        ..EventFilter::default()
    };
    let latest = store.list_events(&of_a(None, 3)).await.unwrap();
    let mine: Vec<Event> = stored
        .iter()
        .filter(|e| flotilla_core::event::visible_to(e.tenant, a))
        .cloned()
        .collect();
    assert_eq!(latest, mine[mine.len() - 3..]);
    let after = store
        .list_events(&of_a(Some(stored[0].id), 2))
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|e| e.tenant).collect::<Vec<_>>(),
        [Some(a), None]
    );
}

async fn pruning_keeps_the_newest_events(store: DynStore) {
    assert_eq!(store.prune_events(5).await.unwrap(), 0);
    let all = scale_events(0, 10);
    store.insert_events(&all).await.unwrap();
    assert_eq!(store.prune_events(10).await.unwrap(), 0);
    assert_eq!(store.prune_events(u64::MAX).await.unwrap(), 0);
    assert_eq!(all_events(&store).await.len(), 10);

    assert_eq!(store.prune_events(4).await.unwrap(), 6);
    let kept = all_events(&store).await;
    assert_stored(&kept, &all[6..]);
    assert_eq!(store.prune_events(4).await.unwrap(), 0);

    assert_eq!(store.prune_events(0).await.unwrap(), 4);
    assert!(all_events(&store).await.is_empty());
    // Ids are never reused, so a follower's cursor stays valid across pruning.
    let later = scale_events(10, 12);
    store.insert_events(&later).await.unwrap();
    let fresh = all_events(&store).await;
    assert_stored(&fresh, &later);
    assert!(fresh[0].id > kept[3].id);
}

async fn a_follower_misses_no_event_of_concurrent_writers(store: DynStore) {
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let store = store.clone();
        writers.spawn(async move {
            for b in 0..25 {
                let pool = format!("w{w}");
                let batch: Vec<NewEvent> = (0..4)
                    .map(|n| event(EventKind::Instance, &pool, None, b * 4 + n))
                    .collect();
                store.insert_events(&batch).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
    }
    let poll = |after| {
        let store = store.clone();
        async move {
            store
                .list_events(&EventFilter {
                    after: Some(after),
                    limit: 7,
                    ..EventFilter::default()
                })
                .await
                .unwrap()
        }
    };
    // Follow while the writers write, then drain what is left.
    let mut followed: Vec<Event> = Vec::new();
    let mut after = 0;
    let mut writing = true;
    while writing || followed.len() < 400 {
        writing = !writers.is_empty();
        if let Some(done) = writers.try_join_next() {
            done.unwrap();
        }
        let page = poll(after).await;
        if let Some(last) = page.last() {
            after = last.id;
        } else if !writing {
            break;
        }
        followed.extend(page);
    }
    assert_eq!(followed, all_events(&store).await);
    assert_eq!(followed.len(), 400);
}
