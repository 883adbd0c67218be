//! The chaos suite (issue 16; docs/reliability.md): the real binary under a steady open-loop
//! stream of submissions through one fault at a time, with figures for each — accepted,
//! refused by status, succeeded, failed (by reason), lost, attempts executed twice by agents, and
//! the time to recover (from the fault until a task submitted after it has succeeded) and to
//! settle (until the last task accepted before it has ended). A fault fails the suite when a
//! task is lost, an attempt runs twice, or recovery takes longer than [`RECOVERY_BOUND`].
//!
//! The full-disk fault mounts a tmpfs (root only, as `.ci/run` runs); the clock jumps run the
//! control plane under libfaketime (Debian's `faketime`, which `.ci/run` installs), moving only
//! its wall clock.
//!
//! Short form (in `.ci/run`): 40 submissions/s, 3 s before each fault and 6 s after it.
//! Longer: `FLOTILLA_CHAOS_RATE=100 FLOTILLA_CHAOS_SECS=60 cargo nextest run -p flotilla --test
//! chaos --no-capture` (seconds of load after the fault; half as many, at least 3, before it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    ADMIN_KEY, BIN, PgDatabase, PrivatePostgres, StopMode, code_generator_server, executed_twice,
    one_leader, start_replica, wait_for_agents, wait_terminal,
};
use flotilla_client::{Client, ClientError};
use flotilla_core::id::TaskId;
use flotilla_core::task::TaskStatus;
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::{AgentProcess, ServerProcess};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A fault must be recovered from within this: the task lease (1.5 s) or leader lease (3 s)
/// runs out, a new leader claims within a third of it, retries back off — the rest is slack for
/// a loaded 2-core machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
const LEADER_LEASE_MS: u64 = 3_000;

/// Submissions per second, and seconds of load after the fault.
fn load() -> (u32, u64) {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        u32::try_from(var("FLOTILLA_CHAOS_RATE", 40)).unwrap_or(40),
        var("FLOTILLA_CHAOS_SECS", 6),
    )
}

/// One submission and what the client saw.
struct Submission {
    at: Instant,
    outcome: Result<TaskId, String>,
}

/// Submits at `rate` per second, round robin over `clients`, until `stop`; a tick that comes
/// late is made up at once (open loop: a slow server does not slow the load down).
async fn open_loop(
    clients: Vec<Client>,
    rate: u32,
    log: Arc<Mutex<Vec<Submission>>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    let mut n = 0usize;
    let mut inflight = tokio::task::JoinSet::new();
    while !stop.is_cancelled() {
        tick.tick().await;
        let client = clients[n % clients.len()].clone();
        let log = log.clone();
        n += 1;
        inflight.spawn(async move {
            let at = Instant::now();
            let task = SubmitTask::new("code_generator", serde_json::json!({ "n": n }));
            let outcome = match client.submit_task(&task).await {
                Ok(t) => Ok(t.id),
                Err(ClientError::Api { status, .. }) => Err(status.to_string()),
                Err(_) => Err("connection".to_owned()),
            };
            log.lock().unwrap().push(Submission { at, outcome });
        });
    }
    while inflight.join_next().await.is_some() {}
}

/// The figures of one fault.
#[derive(Debug)]
struct Figures {
    fault: &'static str,
    accepted: usize,
    refused: BTreeMap<String, usize>,
    succeeded: usize,
    /// Of them, submitted after the fault.
    succeeded_after: usize,
    failed: BTreeMap<String, usize>,
    lost: usize,
    executed_twice: usize,
    recovery: Option<Duration>,
    /// From the fault until the last task accepted before it ended (tasks in flight at the fault
    /// wait for their lease, or their retry, to run again).
    settled: Option<Duration>,
}

impl Figures {
    fn print(&self) {
        let secs =
            |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
        eprintln!(
            "chaos | {:<30} | accepted {:>5} | succeeded {:>5} | failed {:?} | lost {} | executed twice {} | recovered in {} | settled in {} | refused {:?}",
            self.fault,
            self.accepted,
            self.succeeded,
            self.failed,
            self.lost,
            self.executed_twice,
            secs(self.recovery),
            secs(self.settled),
            self.refused,
        );
    }

    /// Fails the test when the fault lost anything or did not recover in time.
    fn check(&self) {
        self.print();
        assert_eq!(self.lost, 0, "{}: tasks lost: {self:?}", self.fault);
        assert_eq!(self.executed_twice, 0, "{}: {self:?}", self.fault);
        assert!(
            self.recovery.is_some_and(|d| d <= RECOVERY_BOUND),
            "{}: no recovery within {RECOVERY_BOUND:?}: {self:?}",
            self.fault
        );
    }
}

/// Runs the load over `clients`, injects `fault` once half the load (at least 3 s) has run,
/// keeps it on until `secs` after the fault began, then follows every accepted task (with `reader`, a client
/// of a replica that survives) to its end.
async fn measure<F, Fut>(
    name: &'static str,
    clients: Vec<Client>,
    reader: Client,
    agents: &[AgentProcess],
    fault: F,
) -> Figures
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let (rate, secs) = load();
    let log = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let generator = tokio::spawn(open_loop(clients, rate, log.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(secs.div_ceil(2).max(3))).await;
    let fault_at = Instant::now();
    let fault_wall = chrono::Utc::now();
    fault().await;
    let fault_took = fault_at.elapsed();
    tokio::time::sleep(Duration::from_secs(secs).saturating_sub(fault_took)).await;
    stop.cancel();
    generator.await.unwrap();

    let submissions = std::mem::take(&mut *log.lock().unwrap());
    let mut figures = Figures {
        fault: name,
        accepted: 0,
        refused: BTreeMap::new(),
        succeeded: 0,
        succeeded_after: 0,
        failed: BTreeMap::new(),
        lost: 0,
        executed_twice: 0,
        recovery: None,
        settled: None,
    };
    let client = reader;
    // Every accepted task gets a minute in all to end; what has not ended then is lost.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first_success_after: Option<chrono::DateTime<chrono::Utc>> = None;
    for s in &submissions {
        let id = match &s.outcome {
            Ok(id) => *id,
            Err(status) => {
                *figures.refused.entry(status.clone()).or_default() += 1;
                continue;
            }
        };
        figures.accepted += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let task = wait_terminal(&client, id, left.max(Duration::from_millis(100))).await;
        if s.at < fault_at
            && let Some(done) = task.finished_at
            && let Ok(after) = (done - fault_wall).to_std()
        {
            figures.settled = Some(figures.settled.map_or(after, |s| s.max(after)));
        }
        match task.status {
            TaskStatus::Succeeded => {
                figures.succeeded += 1;
                figures.succeeded_after += usize::from(s.at > fault_at);
                if s.at > fault_at
                    && let Some(done) = task.finished_at
                {
                    first_success_after = Some(first_success_after.map_or(done, |f| f.min(done)));
                }
            }
            status if status.is_terminal() => {
                let reason = task.error.unwrap_or_else(|| status.to_string());
                *figures.failed.entry(reason).or_default() += 1;
            }
            _ => figures.lost += 1,
        }
    }
    figures.recovery = first_success_after.and_then(|done| (done - fault_wall).to_std().ok());
    figures.executed_twice = executed_twice(agents);
    figures
}

/// `n` simulated agents of `code_generator` (60 ms median), registered with `control_plane`.
async fn agents(control_plane: &str, n: usize) -> Vec<AgentProcess> {
    agents_with(control_plane, n, &[]).await
}

/// [`agents`] with extra environment variables.
async fn agents_with(
    control_plane: &str,
    n: usize,
    env: &[(&str, std::ffi::OsString)],
) -> Vec<AgentProcess> {
    let mut agents = Vec::new();
    for _ in 0..n {
        let mut builder = AgentProcess::builder(BIN, "code_generator", control_plane, ADMIN_KEY)
            .env("RUST_LOG", "info,flotilla_agent=debug");
        for (key, value) in env {
            builder = builder.env(*key, value.clone());
        }
        let agent = builder
            .args([
                "--capacity",
                "16",
                "--median-ms",
                "60",
                "--p99-ms",
                "200",
                "--failure-rate",
                "0",
            ])
            .start()
            .await
            .expect("agent starts");
        agents.push(agent);
    }
    agents
}

/// One control plane on SQLite, or on PostgreSQL at `url`.
async fn single(url: Option<&str>) -> ServerProcess {
    let mut builder = code_generator_server();
    if let Some(url) = url {
        builder = builder.args(["--database-url", url]);
    }
    builder.start().await.expect("server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_control_plane() {
    let mut server = single(None).await;
    let mut agents = agents(&server.base_url(), 2).await;
    let client = server.client().unwrap();
    wait_for_agents(&client, 2, Duration::from_secs(20)).await;
    let reader = client.clone();
    let server_ref = &mut server;
    let figures = measure(
        "SIGKILL control plane",
        vec![client],
        reader,
        &agents,
        || async move {
            server_ref.kill_hard().await.unwrap();
            server_ref.restart().await.unwrap();
        },
    )
    .await;
    figures.check();
    for agent in &mut agents {
        agent.terminate().await.ok();
    }
    server.terminate().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_of_three() {
    let db = PgDatabase::create();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Some(start_replica(&db.url, LEADER_LEASE_MS).await));
    }
    let mut agents_all = Vec::new();
    for replica in replicas.iter().flatten() {
        agents_all.extend(agents(&replica.base_url(), 1).await);
    }
    let clients: Vec<Option<Client>> = replicas
        .iter()
        .map(|r| r.as_ref().map(|r| r.client().unwrap()))
        .collect();
    wait_for_agents(clients[0].as_ref().unwrap(), 3, Duration::from_secs(20)).await;
    let (leader, _) = one_leader(&clients, Duration::from_secs(10)).await;
    let survivor = clients[(leader + 1) % 3].clone().unwrap();
    let load: Vec<Client> = clients.iter().flatten().cloned().collect();
    let victim = replicas[leader].as_mut().unwrap();
    let figures = measure(
        "SIGKILL leader of 3 (PG)",
        load,
        survivor,
        &agents_all,
        || async move {
            victim.kill_hard().await.unwrap();
        },
    )
    .await;
    figures.check();
    for agent in &mut agents_all {
        agent.terminate().await.ok();
    }
    for replica in replicas.iter_mut().flatten() {
        replica.terminate().await.ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_half_the_agents() {
    let mut server = single(None).await;
    let mut agents = agents(&server.base_url(), 4).await;
    let client = server.client().unwrap();
    wait_for_agents(&client, 4, Duration::from_secs(20)).await;
    let reader = client.clone();
    let (killed, kept) = agents.split_at_mut(2);
    let figures = measure(
        "SIGKILL half the agents",
        vec![client],
        reader,
        kept,
        || async move {
            for agent in killed.iter_mut() {
                agent.kill_hard().await.unwrap();
            }
        },
    )
    .await;
    // The killed agents' logs count too: an attempt they ran must not run again elsewhere.
    assert_eq!(executed_twice(&agents), 0);
    figures.check();
    for agent in &mut agents {
        agent.terminate().await.ok();
    }
    server.terminate().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart() {
    let mut pg = PrivatePostgres::start();
    let url = pg.url.clone();
    let mut server = single(Some(&url)).await;
    let mut agents = agents(&server.base_url(), 2).await;
    let client = server.client().unwrap();
    wait_for_agents(&client, 2, Duration::from_secs(20)).await;
    let reader = client.clone();
    let pg_ref = &mut pg;
    let figures = measure(
        "PostgreSQL restart (immediate)",
        vec![client],
        reader,
        &agents,
        || async move {
            pg_ref.stop(StopMode::Immediate);
            tokio::time::sleep(Duration::from_secs(2)).await;
            pg_ref.start_again();
        },
    )
    .await;
    figures.check();
    for agent in &mut agents {
        agent.terminate().await.ok();
    }
    server.terminate().await.ok();
}

/// A tmpfs of `size` mounted on a temporary directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "the full-disk fault mounts a tmpfs and needs root (as .ci/run has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    /// Fills the disk with a file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_data_directory() {
    // The database (and its WAL) on the small disk; the data directory, with the server's log
    // files, elsewhere: a server whose log cannot be written is another fault.
    let disk = SmallDisk::mount("256m");
    let database = disk.dir.path().join("flotilla.db");
    let mut server = code_generator_server()
        .env(
            "FLOTILLA_DATABASE__URL",
            format!("sqlite://{}", database.display()),
        )
        .start()
        .await
        .expect("server starts");
    let mut agents = agents(&server.base_url(), 2).await;
    let client = server.client().unwrap();
    wait_for_agents(&client, 2, Duration::from_secs(20)).await;
    let reader = client.clone();
    let (disk_ref, server_ref) = (&disk, &mut server);
    let exited = std::sync::atomic::AtomicBool::new(false);
    let exited_ref = &exited;
    let figures = measure(
        "disk full for 3 s (SQLite)",
        vec![client],
        reader,
        &agents,
        || async move {
            let filler = disk_ref.fill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            std::fs::remove_file(filler).unwrap();
            // A control plane that stopped is restarted, as its supervisor would.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if server_ref.check_running().is_err() {
                exited_ref.store(true, std::sync::atomic::Ordering::SeqCst);
                server_ref.restart().await.unwrap();
            }
        },
    )
    .await;
    eprintln!(
        "chaos | disk full: the control plane {}",
        if exited.into_inner() {
            "exited and was restarted"
        } else {
            "kept running"
        }
    );
    if figures.lost > 0 {
        // What the server said about it: its warnings and errors, each once.
        let logs = server.all_logs();
        let mut seen = std::collections::HashSet::new();
        for line in logs
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        {
            let what: String = line.chars().skip(40).take(90).collect();
            if seen.insert(what) && seen.len() <= 40 {
                eprintln!("{line}");
            }
        }
    }
    figures.check();
    for agent in &mut agents {
        agent.terminate().await.ok();
    }
    server.terminate().await.ok();
}

/// libfaketime, from Debian's `faketime`.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The machine's wall clock (not the monotonic one) jumps by `offset` (`+1h`, `-1h`), for the
/// control plane and its agents alike, as an NTP step on their host would. (Between hosts, a
/// skew beyond the agents' signature window fails dispatch: docs/reliability.md.)
async fn clock_jump(name: &'static str, offset: &'static str) {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "the clock-jump faults need {LIBFAKETIME} (apt-get install faketime, as .ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let offset_file = dir.path().join("faketime");
    std::fs::write(&offset_file, "+0\n").unwrap();
    let faked: Vec<(&str, std::ffi::OsString)> = vec![
        ("LD_PRELOAD", LIBFAKETIME.into()),
        ("FAKETIME_TIMESTAMP_FILE", offset_file.clone().into()),
        ("FAKETIME_NO_CACHE", "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
    ];
    let mut builder = code_generator_server();
    for (key, value) in &faked {
        builder = builder.env(*key, value.clone());
    }
    let mut server = builder.start().await.expect("server starts");
    let mut agents = agents_with(&server.base_url(), 2, &faked).await;
    let client = server.client().unwrap();
    wait_for_agents(&client, 2, Duration::from_secs(20)).await;
    let reader = client.clone();
    let file = offset_file.clone();
    let figures = measure(name, vec![client], reader, &agents, || async move {
        std::fs::write(&file, format!("{offset}\n")).unwrap();
    })
    .await;
    // The tasks' times are on the control plane's clock, which the fault moved: recovery and
    // settling cannot be timed from them. Judged: nothing lost or run twice, and work submitted
    // after the jump succeeds (recovery shown as 0).
    let figures = Figures {
        recovery: (figures.succeeded_after > 0).then_some(Duration::ZERO),
        settled: None,
        ..figures
    };
    figures.check();
    for agent in &mut agents {
        agent.terminate().await.ok();
    }
    server.terminate().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_clock_jumps_an_hour_ahead() {
    clock_jump("wall clock +1 h", "+1h").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_clock_jumps_an_hour_back() {
    clock_jump("wall clock -1 h", "-1h").await;
}
