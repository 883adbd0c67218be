//! Shared set-up of the end-to-end tests: the binary, keys, and a fresh PostgreSQL database per
//! test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flotilla_client::Client;
use flotilla_core::id::TaskId;
use flotilla_core::task::Task;
use std::process::Command;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
/// The admin key every test server is started with.
pub const ADMIN_KEY: &str = "flt_e2eadmin_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

/// A PostgreSQL database created for one test and dropped after it.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub fn create() -> PgDatabase {
        let base = flotilla_testkit::postgres_url();
        let name = format!("flotilla_e2e_{}", uuid::Uuid::new_v4().simple());
        psql(&base, &format!("CREATE DATABASE {name}"));
        let (prefix, _) = base
            .rsplit_once('/')
            .expect("the PostgreSQL URL names a database");
        PgDatabase {
            url: format!("{prefix}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let base = flotilla_testkit::postgres_url();
        let _ = Command::new("psql")
            .args([
                &base,
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-qc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Long-polls a task until it is terminal or `within` passes; returns its last state.
pub async fn wait_terminal(client: &Client, id: TaskId, within: Duration) -> Task {
    let deadline = Instant::now() + within;
    loop {
        match client.get_task(id, Some(Duration::from_secs(5))).await {
            Ok(task) if task.status.is_terminal() => return task,
            Ok(task) if Instant::now() > deadline => return task,
            Ok(_) => {}
            Err(e) if Instant::now() > deadline => panic!("task {id} unreadable: {e}"),
            // The server may be restarting.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
