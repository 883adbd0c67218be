#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;
use flotilla_core::id::{AgentId, TaskId, TenantId};
use flotilla_core::task::{AttemptEnd, AttemptResult, NewTask};
use flotilla_store::{DynStore, PostgresStore, SqliteStore, Store};
use std::sync::Arc;
use std::time::Instant;

async fn bench(store: DynStore, batch: usize, total: usize) {
    store.migrate().await.unwrap();
    let now = chrono::Utc::now();
    let start = Instant::now();
    let mut done = 0;
    let (mut ti, mut tc, mut tf) = (
        std::time::Duration::ZERO,
        std::time::Duration::ZERO,
        std::time::Duration::ZERO,
    );
    while done < total {
        let tasks: Vec<NewTask> = (0..batch)
            .map(|_| NewTask {
                id: TaskId(support::next_id()),
                tenant_id: TenantId::DEFAULT,
                agent_type: "w".into(),
                input: serde_json::json!({"prompt":"hello world","n":1}),
                priority: 5,
                complexity: None,
                idempotency_key: None,
                timeout_ms: 1000,
                max_attempts: 3,
                trace_id: None,
                created_at: now,
            })
            .collect();
        let a = Instant::now();
        store.insert_tasks(&tasks).await.unwrap();
        ti += a.elapsed();
        let a = Instant::now();
        let claimed = store
            .claim_tasks(
                "w",
                batch as u32,
                "me",
                now + chrono::Duration::seconds(30),
                now,
            )
            .await
            .unwrap();
        assert_eq!(claimed.len(), batch);
        tc += a.elapsed();
        let ends: Vec<AttemptEnd> = claimed
            .iter()
            .map(|t| AttemptEnd {
                task_id: t.id,
                attempt: t.attempt,
                agent_id: Some(AgentId(support::next_id())),
                started_at: now,
                finished_at: now,
                result: AttemptResult::Succeeded {
                    output: serde_json::json!({"a":1}),
                    usage: None,
                },
            })
            .collect();
        let a = Instant::now();
        let r = store.finish_attempts(&ends).await.unwrap();
        tf += a.elapsed();
        assert!(r.iter().all(Option::is_some));
        done += batch;
    }
    let el = start.elapsed();
    println!(
        "{} batch {batch}: {total} tasks in {el:?} = {:.0} tasks/s",
        store.backend(),
        total as f64 / el.as_secs_f64()
    );
    println!("   insert {ti:?} claim {tc:?} finish {tf:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bench_all() {
    let dir = tempfile::tempdir().unwrap();
    for batch in [10, 50, 200] {
        let s = SqliteStore::open(&dir.path().join(format!("b{batch}.db")), 4)
            .await
            .unwrap();
        bench(Arc::new(s), batch, 6000).await;
    }
    for batch in [10, 50, 200] {
        let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
        let s =
            PostgresStore::connect_in_schema("postgres://postgres@127.0.0.1:5432/test", &schema, 4)
                .await
                .unwrap();
        bench(Arc::new(s), batch, 6000).await;
    }
}
