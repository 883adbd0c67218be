//! A leader whose store hangs steps down when its term ends (docs/design.md §9), not when the
//! store answers or its timeouts run out: another control plane may take the lease as soon as it
//! has expired in the database, so a leader that kept its singleton loops running past its term
//! could act beside the next one.
//!
//! The fault is real: another PostgreSQL session locks the lease table, so the leader's claims
//! (and its presence count) block inside the database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use sqlx::Connection;
use std::time::{Duration, Instant};
use support::{Backend, Settings, TestServer};

const LEASE_MS: u64 = 1_500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_store_hangs_steps_down_at_the_end_of_its_term() {
    let settings = Settings::default().set("database.leader_lease_ms", LEASE_MS as i64);
    let server = TestServer::start(Backend::Postgres, settings).await;
    let started = Instant::now();
    while !server.leadership().is_leader() {
        assert!(started.elapsed() < Duration::from_secs(10), "never led");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let schema = server.postgres_schema().unwrap().to_owned();
    let mut blocker = sqlx::PgConnection::connect(&flotilla_testkit::postgres_url())
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query(&format!(
        "LOCK TABLE \"{schema}\".leader_leases IN ACCESS EXCLUSIVE MODE"
    ))
    .execute(&mut blocker)
    .await
    .unwrap();
    // Every claim from now on blocks; the last one that succeeded started before this instant,
    // so the term ends at most one lease after it.
    let locked = Instant::now();
    while server.leadership().is_leader() {
        assert!(
            locked.elapsed() < Duration::from_secs(10),
            "still leading 10 s after the store hung"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let down = locked.elapsed();
    println!(
        "stepped down {} ms after the store hung (lease {LEASE_MS} ms)",
        down.as_millis()
    );
    // Scheduling slack on a loaded CI machine, far below the ttl/3 + 2 s it took before.
    assert!(
        down <= Duration::from_millis(LEASE_MS + 600),
        "stepped down {} ms after the store hung; the term ended within {LEASE_MS} ms",
        down.as_millis()
    );
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    // Once the store answers again, it leads again.
    let again = Instant::now();
    while !server.leadership().is_leader() {
        assert!(again.elapsed() < Duration::from_secs(10), "never led again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await;
}
