//! Idle types cost nothing (docs/security.md, "Agent trust model"): registering an instance of a
//! type starts its dispatcher loop; once the type has neither a pool nor an instance the loop
//! ends. 1,000 types registered and removed leave the real control plane's idle CPU under 1 % of
//! a core, measured from `/proc/<pid>/stat` over a window.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN};
use flotilla_core::wire::RegisterAgent;
use flotilla_testkit::ServerProcess;
use std::time::{Duration, Instant};

const TYPES: usize = 1_000;
const WINDOW: Duration = Duration::from_secs(5);

/// User + system CPU time of a process so far (from `/proc/<pid>/stat`, in clock ticks of
/// 1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Share of one core the process used over `WINDOW`.
async fn idle_cpu(pid: u32) -> f64 {
    let (before, started) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(WINDOW).await;
    let used = (cpu_ticks(pid) - before) as f64 / 100.0;
    used / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_removed_types_leave_the_control_plane_idle() {
    let server = ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .start()
        .await
        .expect("server starts");
    let pid = server.pid().unwrap();
    let client = server.client().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = idle_cpu(pid).await;

    let mut ids = Vec::with_capacity(TYPES);
    for i in 0..TYPES {
        let body = RegisterAgent {
            agent_type: format!("idle-{i}"),
            // Nothing listens there: no task is ever submitted.
            url: "http://127.0.0.1:9".to_owned(),
            capacity: 1,
            weight: None,
            metadata: None,
            version: None,
        };
        ids.push(client.register_agent(&body).await.unwrap().id);
    }
    for id in ids {
        client.deregister(id).await.unwrap();
    }
    assert!(client.list_agents().await.unwrap().agents.is_empty());
    // Let the loops notice (each looks within its poll interval).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = idle_cpu(pid).await;
    println!(
        "idle CPU of the control plane: {:.2} % of a core before, {:.2} % after {TYPES} types came and went",
        baseline * 100.0,
        after * 100.0
    );
    assert!(
        after < 0.01,
        "idle CPU after {TYPES} removed types is {:.2} % of a core (before: {:.2} %)",
        after * 100.0,
        baseline * 100.0
    );
}
