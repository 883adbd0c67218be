//! The per-test stores of the behaviour suite.

/// Generates, for each named `async fn(DynStore)`, a test on SQLite (`sqlite::<name>`) and one
/// on PostgreSQL (`postgres::<name>`), each on a fresh store.
#[allow(unused_macros)]
macro_rules! behaviours {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::support::run(super::Backend::Sqlite, super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::support::run(super::Backend::Postgres, super::$name).await;
                }
            )*
        }
    };
}

use flotilla_core::Timestamp;
use flotilla_store::{DynStore, PostgresStore, SqliteStore};
use sqlx::Connection;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use uuid::Uuid;

/// Which store a behaviour runs against.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

fn postgres_url() -> String {
    std::env::var("FLOTILLA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs `behaviour` against a fresh, migrated store of `backend`, then removes the store.
pub async fn run<F, Fut>(backend: Backend, behaviour: F)
where
    F: FnOnce(DynStore) -> Fut,
    Fut: Future<Output = ()>,
{
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            // A directory that does not exist yet: open creates it.
            let store = SqliteStore::open(&dir.path().join("data").join("flotilla.db"), 4)
                .await
                .unwrap();
            with_store(Arc::new(store), behaviour).await;
        }
        Backend::Postgres => {
            let schema = format!("t_{}", Uuid::new_v4().simple());
            let store = PostgresStore::connect_in_schema(&postgres_url(), &schema, 10)
                .await
                .unwrap();
            with_store(Arc::new(store), behaviour).await;
            drop_schema(&schema).await;
        }
    }
}

async fn with_store<F, Fut>(store: DynStore, behaviour: F)
where
    F: FnOnce(DynStore) -> Fut,
    Fut: Future<Output = ()>,
{
    assert!(!store.ready().await.unwrap(), "not ready before migrations");
    store.migrate().await.unwrap();
    behaviour(store).await;
}

/// Best effort: a schema left behind by a failed test is harmless.
async fn drop_schema(schema: &str) {
    let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_url()).await else {
        return;
    };
    let drop: Result<String, _> =
        sqlx::query_scalar("SELECT format('DROP SCHEMA IF EXISTS %I CASCADE', $1::text)")
            .bind(schema)
            .fetch_one(&mut conn)
            .await;
    if let Ok(drop) = drop {
        let _ = sqlx::raw_sql(&drop).execute(&mut conn).await;
    }
    let _ = conn.close().await;
}

/// A fresh UUIDv7, strictly greater than every earlier one of this process (one per millisecond
/// of a synthetic clock), so that id order is creation order as in production.
pub fn next_id() -> Uuid {
    static MILLIS: AtomicU64 = AtomicU64::new(1_700_000_000_000);
    let millis = MILLIS.fetch_add(1, Ordering::Relaxed);
    let random = Uuid::new_v4();
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&random.as_bytes()[..10]);
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid()
}

/// A timestamp as the store gives it back (microsecond precision).
pub fn truncate(t: Timestamp) -> Timestamp {
    Timestamp::from_timestamp_micros(t.timestamp_micros()).unwrap()
}
