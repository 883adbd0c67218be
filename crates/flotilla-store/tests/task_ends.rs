//! Every accepted task ends (docs/design.md §4): a task whose attempts keep being lost fails
//! after `max_lost`, and a queued task no instance took in time fails with the reason given. On
//! SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use chrono::{Duration, TimeZone, Utc};
use flotilla_core::Timestamp;
use flotilla_core::id::{TaskId, TenantId};
use flotilla_core::task::{NewTask, Task, TaskStatus};
use flotilla_store::{DynStore, Inserted, Overdue};
use serde_json::json;
use support::{Backend, next_id, truncate};

behaviours!(
    a_task_that_loses_too_many_attempts_fails,
    overdue_queued_tasks_fail_with_the_reason_given,
);

fn t0() -> Timestamp {
    Utc.timestamp_opt(1_700_000_000, 0).single().unwrap()
}

fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

fn task(tenant: TenantId, agent_type: &str, due: Timestamp) -> NewTask {
    NewTask {
        id: TaskId(next_id()),
        tenant_id: tenant,
        agent_type: agent_type.to_owned(),
        input: json!({}),
        priority: 5,
        complexity: None,
        idempotency_key: None,
        timeout_ms: 30_000,
        max_attempts: 3,
        trace_id: None,
        claim: None,
        created_at: due,
    }
}

async fn insert(store: &DynStore, tasks: &[NewTask]) {
    for inserted in store.insert_tasks(tasks).await.unwrap() {
        assert!(matches!(inserted, Inserted::Created(_)));
    }
}

async fn get(store: &DynStore, id: TaskId) -> Task {
    store.get_task(None, id).await.unwrap().unwrap()
}

async fn a_task_that_loses_too_many_attempts_fails(store: DynStore) {
    let tenant = TenantId(next_id());
    let poison = task(tenant, "w", t0());
    insert(&store, std::slice::from_ref(&poison)).await;
    let mut now = t0();
    for lost in 1..=2 {
        let claimed = store
            .claim_tasks("w", tenant, 1, "replica", now + secs(10), now)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "claimable again after loss {}", lost - 1);
        now += secs(11);
        let requeued = store.requeue_expired(now, None, 2).await.unwrap();
        assert_eq!(requeued.len(), 1);
        assert_eq!(requeued[0].failed, lost == 2, "loss {lost} of at most 2");
    }
    let ended = get(&store, poison.id).await;
    assert_eq!(ended.status, TaskStatus::Failed);
    assert_eq!(ended.finished_at, Some(truncate(now)));
    let error = ended.error.unwrap();
    assert!(
        error.starts_with("lost 2 attempts: ") && error.contains("scheduler.max_lost_attempts = 2"),
        "{error}"
    );
    let outcomes: Vec<&str> = ended.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["lost", "lost"]);
    // It is over: nothing claims or re-queues it again.
    assert!(
        store
            .claim_tasks("w", tenant, 1, "replica", now + secs(10), now)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .requeue_expired(now + secs(60), None, 2)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn overdue_queued_tasks_fail_with_the_reason_given(store: DynStore) {
    let tenant = TenantId(next_id());
    let old_quick = task(tenant, "quick", t0());
    let new_quick = task(tenant, "quick", t0() + secs(50));
    let old_other = task(tenant, "other", t0());
    let old_running = task(tenant, "quick", t0());
    insert(
        &store,
        &[
            old_quick.clone(),
            new_quick.clone(),
            old_other.clone(),
            old_running.clone(),
        ],
    )
    .await;
    // One of the old ones has started: it is not queued any more.
    let started = store
        .claim_tasks("quick", tenant, 1, "replica", t0() + secs(100), t0())
        .await
        .unwrap();
    assert_eq!(started.len(), 1);
    let started = started[0].id;

    let now = t0() + secs(60);
    let overdue = |agent_type, except: &'static [String], error| Overdue {
        agent_type,
        except,
        due_before: now - secs(30),
        error,
        limit: 100,
    };
    let failed = store
        .fail_overdue(&overdue(Some("quick"), &[], "quick took too long"), now)
        .await
        .unwrap();
    let queued_old_quick = [old_quick.id, old_running.id]
        .into_iter()
        .find(|id| *id != started)
        .unwrap();
    assert_eq!(failed, [(queued_old_quick, "quick".to_owned())]);
    let ended = get(&store, queued_old_quick).await;
    assert_eq!(
        (ended.status, ended.error.as_deref(), ended.finished_at),
        (
            TaskStatus::Failed,
            Some("quick took too long"),
            Some(truncate(now))
        )
    );
    assert!(ended.attempts.is_empty());
    assert_eq!(get(&store, new_quick.id).await.status, TaskStatus::Queued);
    assert_eq!(get(&store, started).await.status, TaskStatus::Running);
    assert_eq!(get(&store, old_other.id).await.status, TaskStatus::Queued);

    // Every other type's: `quick` is excepted, `other` fails.
    static EXCEPT: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| vec!["quick".to_owned()]);
    let failed = store
        .fail_overdue(&overdue(None, &EXCEPT, "nobody took it"), now)
        .await
        .unwrap();
    assert_eq!(failed, [(old_other.id, "other".to_owned())]);
    // A second sweep finds nothing more.
    assert!(
        store
            .fail_overdue(&overdue(None, &[], "again"), now)
            .await
            .unwrap()
            .is_empty()
    );
}
