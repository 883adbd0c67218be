//! Throughput of several control planes on one PostgreSQL database (docs/design.md §9):
//! `cargo bench -p flotilla --bench replicas`.
//!
//! For each number of replicas (1, 2 and 3 by default) the benchmark creates a fresh database
//! on the shared PostgreSQL, starts that many `flotilla serve` processes (the release binary
//! that `cargo bench` builds) and the same fixed set of `flotilla agent` processes doing
//! simulated work, each agent registered with one replica, round-robin. A closed-loop load
//! spread over the replicas submits a task and long-polls it (`GET /v1/tasks/{id}?wait=`) until
//! it ends, then submits the next. After a warm-up it measures, for a fixed time, the tasks
//! completed per second, the submit-to-terminal latency, and the CPU of every process.
//!
//! It also checks that the scale-out is correct: every accepted task succeeded, and no attempt
//! ran twice on the agents (their `Executing task.` log lines).
//!
//! Everything shares this machine's cores: the replicas, PostgreSQL, the agents and the load
//! generator. On a 2-core box the figure measures the overhead of scale-out, not the scaling
//! that replicas on machines of their own would give (docs/benchmarks.md).
//!
//! Settings come from the environment, see [`Settings::from_env`]; `FLOTILLA_BENCH_SIZE=tiny`
//! runs a short smoke version.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use anyhow::{Context, Result, anyhow, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use flotilla_client::Client;
use flotilla_core::task::TaskStatus;
use flotilla_core::wire::SubmitTask;
use flotilla_store::PostgresStore;
use flotilla_store::prelude::*;
use flotilla_testkit::{AgentProcess, ServerProcess};
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The binary under test, built by `cargo bench` in the release profile.
const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
/// The admin key the benchmark's control planes are started with (never a real deployment's).
const BENCH_KEY: &str = "flt_bench_4lZx9qT2mWv7Rk0sNc3YhB8pDe6GuJ1aFo5iXtLyQ3m";
/// Every replica derives the same task-token and vault keys from one master key.
const MASTER_KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";
const AGENT_TYPE: &str = "code_generator";
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK` on Linux).
const TICKS: f64 = 100.0;

/// What to run and how big.
#[derive(Debug)]
struct Settings {
    /// The configurations: how many replicas each.
    replicas: Vec<usize>,
    /// Agent processes (the same set for every configuration).
    agents: usize,
    capacity: u32,
    median_ms: u32,
    p99_ms: u32,
    /// Closed-loop clients, spread evenly over the replicas.
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    postgres_url: String,
}

impl Settings {
    /// `FLOTILLA_BENCH_REPLICAS` (`1,2,3`), `FLOTILLA_BENCH_AGENTS` (6), `…_CAPACITY` (16),
    /// `…_MEDIAN_MS` (5), `…_P99_MS` (20), `…_CONCURRENCY` (64), `…_WARMUP_SECS` (3),
    /// `…_SECS` (20), `FLOTILLA_BENCH_SIZE=tiny` (1 s warm-up, 3 s measured), and
    /// `FLOTILLA_TEST_POSTGRES_URL`.
    fn from_env() -> Result<Settings> {
        let tiny = std::env::var("FLOTILLA_BENCH_SIZE").is_ok_and(|s| s == "tiny");
        let num = |var: &str, full: f64, small: f64| -> Result<f64> {
            match std::env::var(var) {
                Ok(v) => v
                    .parse::<f64>()
                    .with_context(|| format!("{var}={v} is not a number")),
                Err(_) => Ok(if tiny { small } else { full }),
            }
        };
        let replicas = std::env::var("FLOTILLA_BENCH_REPLICAS")
            .unwrap_or_else(|_| "1,2,3".to_owned())
            .split(',')
            .map(|n| {
                n.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow!("FLOTILLA_BENCH_REPLICAS: `{n}` is not a count"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Settings {
            replicas,
            agents: num("FLOTILLA_BENCH_AGENTS", 6.0, 6.0)? as usize,
            capacity: num("FLOTILLA_BENCH_CAPACITY", 16.0, 16.0)? as u32,
            median_ms: num("FLOTILLA_BENCH_MEDIAN_MS", 5.0, 5.0)? as u32,
            p99_ms: num("FLOTILLA_BENCH_P99_MS", 20.0, 20.0)? as u32,
            concurrency: num("FLOTILLA_BENCH_CONCURRENCY", 64.0, 32.0)? as usize,
            warmup: Duration::from_secs_f64(num("FLOTILLA_BENCH_WARMUP_SECS", 3.0, 1.0)?),
            measure: Duration::from_secs_f64(num("FLOTILLA_BENCH_SECS", 20.0, 3.0)?),
            postgres_url: std::env::var("FLOTILLA_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned()),
        })
    }
}

/// What one configuration gave.
struct Outcome {
    replicas: usize,
    tasks_per_s: f64,
    completed: usize,
    p50_ms: f64,
    p99_ms: f64,
    /// Cores used over the measured window, per replica.
    replica_cores: Vec<f64>,
    agent_cores: f64,
    postgres_cores: f64,
    load_cores: f64,
    /// Share of the machine's CPU time that was busy (all processes, from `/proc/stat`).
    machine_busy: f64,
    load_average: String,
    /// Tasks accepted over the whole run (warm-up and drain included).
    accepted: usize,
    failed_submissions: usize,
    /// Tasks that ended otherwise than `succeeded`, by status.
    not_succeeded: Vec<String>,
    /// `(task, attempt)` pairs the agents executed more than once.
    ran_twice: usize,
    /// Tasks that needed more than one attempt (e.g. an instance at capacity answered 429).
    retried: usize,
}

impl Outcome {
    fn correct(&self) -> bool {
        self.failed_submissions == 0 && self.not_succeeded.is_empty() && self.ran_twice == 0
    }
}

fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcomes = runtime.block_on(async {
        let mut outcomes = Vec::new();
        for &n in &settings.replicas {
            eprintln!("== {n} replica(s) (load average {})", load_average());
            outcomes.push(run(&settings, n).await?);
        }
        anyhow::Ok(outcomes)
    })?;

    let base = outcomes
        .iter()
        .find(|o| o.replicas == 1)
        .map(|o| (o.tasks_per_s, o.p50_ms, o.p99_ms));
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "replicas",
        "tasks/s",
        "vs 1",
        "p50 / p99 ms",
        "CPU (cores): replicas",
        "agents",
        "PostgreSQL",
        "load gen.",
        "CPU µs/task: replicas, PG",
        "machine busy",
        "checks",
    ]);
    for o in &outcomes {
        let ratio = base.map_or_else(String::new, |(tps, p50, p99)| {
            format!(
                "×{:.2} (p50 ×{:.2}, p99 ×{:.2})",
                o.tasks_per_s / tps,
                o.p50_ms / p50,
                o.p99_ms / p99
            )
        });
        let replicas: Vec<String> = o.replica_cores.iter().map(|c| format!("{c:.2}")).collect();
        let checks = if o.correct() {
            format!(
                "ok: {} accepted, all succeeded, none ran twice ({} retried)",
                o.accepted, o.retried
            )
        } else {
            format!(
                "FAILED: failed submissions {}, not succeeded {:?}, ran twice {}",
                o.failed_submissions, o.not_succeeded, o.ran_twice
            )
        };
        table.add_row([
            o.replicas.to_string(),
            format!("{:.0} ({} in window)", o.tasks_per_s, o.completed),
            ratio,
            format!("{:.1} / {:.1}", o.p50_ms, o.p99_ms),
            format!(
                "{} = {:.2}",
                replicas.join(" + "),
                o.replica_cores.iter().sum::<f64>()
            ),
            format!("{:.2}", o.agent_cores),
            format!("{:.2}", o.postgres_cores),
            format!("{:.2}", o.load_cores),
            format!(
                "{:.0}, {:.0}",
                o.replica_cores.iter().sum::<f64>() / o.tasks_per_s * 1e6,
                o.postgres_cores / o.tasks_per_s * 1e6
            ),
            format!("{:.0}% (load {})", o.machine_busy * 100.0, o.load_average),
            checks,
        ]);
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "\nFlotilla replicas benchmark ({cpus} CPUs shared by every process; {} agents × capacity \
         {}, simulated work median {} ms / p99 {} ms; {} closed-loop clients; {:?} warm-up, \
         {:?} measured)\n{table}",
        settings.agents,
        settings.capacity,
        settings.median_ms,
        settings.p99_ms,
        settings.concurrency,
        settings.warmup,
        settings.measure
    );
    if outcomes.iter().any(|o| !o.correct()) {
        bail!("a configuration lost, failed or repeated work");
    }
    Ok(())
}

/// One configuration: `n` replicas on a fresh database.
async fn run(settings: &Settings, n: usize) -> Result<Outcome> {
    let db = Database::create(&settings.postgres_url)?;
    let mut replicas = Vec::with_capacity(n);
    // One after the other: the first applies the migrations.
    for _ in 0..n {
        let replica = ServerProcess::builder(BIN)
            .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", BENCH_KEY)
            .env("FLOTILLA_MASTER_KEY", MASTER_KEY)
            .env("RUST_LOG", "warn")
            // Each task costs a submission and at least one long-poll: the default per-key
            // limit (1000 requests/s, shared by the replicas) would be the ceiling measured.
            .env("FLOTILLA_RATE_LIMITS__PER_KEY", "off")
            .env("FLOTILLA_RATE_LIMITS__PER_TENANT", "off")
            .args(["--database-url", &db.url])
            .arg("--config")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/code_generator_pool.toml"
            ))
            .start()
            .await?;
        replicas.push(replica);
    }
    let mut agents = Vec::with_capacity(settings.agents);
    for i in 0..settings.agents {
        let agent = AgentProcess::builder(BIN, AGENT_TYPE, replicas[i % n].base_url(), BENCH_KEY)
            // The `Executing task.` lines tell whether an attempt ran twice.
            .env("RUST_LOG", "warn,flotilla_agent=debug")
            .args([
                "--capacity".to_owned(),
                settings.capacity.to_string(),
                "--median-ms".to_owned(),
                settings.median_ms.to_string(),
                "--p99-ms".to_owned(),
                settings.p99_ms.max(settings.median_ms).to_string(),
                "--failure-rate".to_owned(),
                "0".to_owned(),
            ])
            .start()
            .await?;
        agents.push(agent);
    }
    let clients: Vec<Client> = replicas
        .iter()
        .map(|r| r.client())
        .collect::<Result<_, _>>()?;
    // Every replica must know the whole fleet before the load starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    for client in &clients {
        while client.list_agents().await.map_or(0, |l| l.agents.len()) < settings.agents {
            if Instant::now() > deadline {
                bail!("a replica did not see the {} agents", settings.agents);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The closed loop.
    let stop = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..settings.concurrency {
        workers.spawn(closed_loop(clients[w % n].clone(), w, stop.clone()));
    }
    tokio::time::sleep(settings.warmup).await;
    let pids: Pids = Pids {
        replicas: replicas.iter().filter_map(ServerProcess::pid).collect(),
        agents: agents.iter().filter_map(AgentProcess::pid).collect(),
    };
    let load = load_average();
    let before = pids.sample()?;
    let window_start = Instant::now();
    tokio::time::sleep(settings.measure).await;
    let after = pids.sample()?;
    let window_end = Instant::now();
    stop.cancel();
    let mut records = Vec::new();
    let mut failed_submissions = 0;
    while let Some(joined) = workers.join_next().await {
        let (mut done, failed) = joined?;
        records.append(&mut done);
        failed_submissions += failed;
    }

    // Throughput and latency over the window.
    let window = window_end - window_start;
    let completed = records
        .iter()
        .filter(|r| r.ended >= window_start && r.ended <= window_end)
        .count();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    for r in records
        .iter()
        .filter(|r| r.submitted >= window_start && r.ended <= window_end)
    {
        latency.record((r.ended - r.submitted).as_micros().max(1) as u64)?;
    }
    let cores = |pid_set: &[u32]| -> f64 {
        pid_set
            .iter()
            .map(|p| after.ticks.get(p).unwrap_or(&0) - before.ticks.get(p).unwrap_or(&0))
            .sum::<u64>() as f64
            / TICKS
            / window.as_secs_f64()
    };
    let replica_cores = pids.replicas.iter().map(|p| cores(&[*p])).collect();
    let postgres: Vec<u32> = after.postgres.clone();
    let busy = (after.machine.0 - before.machine.0) as f64
        / ((after.machine.1 - before.machine.1) as f64).max(1.0);

    // Correctness: every accepted task succeeded in the store, none ran twice.
    let accepted = records.len();
    let store = PostgresStore::connect(&db.url, 1).await?;
    let counts = store.task_counts_by_status().await?;
    store.close().await;
    let succeeded = counts
        .iter()
        .find(|(s, _)| *s == TaskStatus::Succeeded)
        .map_or(0, |(_, n)| *n);
    let mut not_succeeded: Vec<String> = counts
        .iter()
        .filter(|(s, n)| *s != TaskStatus::Succeeded && *n > 0)
        .map(|(s, n)| format!("{s}={n}"))
        .collect();
    if succeeded != accepted as u64 {
        not_succeeded.push(format!("succeeded {succeeded} of {accepted} accepted"));
    }
    let not_succeeded_records = records.iter().filter(|r| !r.succeeded).count();
    if not_succeeded_records > 0 {
        not_succeeded.push(format!("{not_succeeded_records} polled as not succeeded"));
    }
    let executions = agent_executions(&agents);
    let ran_twice = executions.values().filter(|n| **n > 1).count();
    let mut attempts_per_task: HashMap<&str, usize> = HashMap::new();
    for (task, _) in executions.keys() {
        *attempts_per_task.entry(task.as_str()).or_insert(0) += 1;
    }
    let retried = attempts_per_task.values().filter(|n| **n > 1).count();

    for agent in &mut agents {
        agent.terminate().await.ok();
    }
    for replica in &mut replicas {
        replica.terminate().await.ok();
    }
    drop(db);

    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let outcome = Outcome {
        replicas: n,
        tasks_per_s: completed as f64 / window.as_secs_f64(),
        completed,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        replica_cores,
        agent_cores: cores(&pids.agents),
        postgres_cores: cores(&postgres),
        load_cores: cores(&[std::process::id()]),
        machine_busy: busy,
        load_average: load,
        accepted,
        failed_submissions,
        not_succeeded,
        ran_twice,
        retried,
    };
    eprintln!(
        "{n} replica(s): {:.0} tasks/s, p50 {:.1} ms, p99 {:.1} ms; {accepted} accepted, \
         {failed_submissions} failed submissions, {ran_twice} ran twice, {retried} retried",
        outcome.tasks_per_s, outcome.p50_ms, outcome.p99_ms
    );
    Ok(outcome)
}

/// One task of the closed loop.
struct Record {
    submitted: Instant,
    ended: Instant,
    succeeded: bool,
}

/// Submits a task and long-polls it until it ends, then the next, until `stop`; returns the
/// tasks it saw end and how many submissions failed.
async fn closed_loop(
    client: Client,
    worker: usize,
    stop: CancellationToken,
) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut failed = 0;
    let mut poll_errors = 0;
    let mut i = 0;
    while !stop.is_cancelled() {
        i += 1;
        let submitted = Instant::now();
        let task = SubmitTask::new(AGENT_TYPE, json!({ "worker": worker, "i": i }));
        let task = match client.submit_task(&task).await {
            Ok(task) => task,
            Err(e) => {
                if failed == 0 {
                    eprintln!("A submission failed (first of worker {worker}): {e}");
                }
                failed += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Until it ends (an accepted task must be accounted for), or two minutes have passed.
        let give_up = Instant::now() + Duration::from_secs(120);
        let status = loop {
            match client
                .get_task(task.id, Some(Duration::from_secs(10)))
                .await
            {
                Ok(t) if t.status.is_terminal() => break Some(t.status),
                Ok(_) => {}
                Err(e) => {
                    poll_errors += 1;
                    if poll_errors == 1 {
                        eprintln!(
                            "Polling task {} failed (first of worker {worker}): {e}",
                            task.id
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            if Instant::now() > give_up {
                eprintln!("Task {} did not end within two minutes", task.id);
                break None;
            }
        };
        records.push(Record {
            submitted,
            ended: Instant::now(),
            succeeded: status == Some(TaskStatus::Succeeded),
        });
    }
    (records, failed)
}

/// The processes whose CPU is measured.
struct Pids {
    replicas: Vec<u32>,
    agents: Vec<u32>,
}

/// CPU ticks of every process of interest, and of the machine.
struct Sample {
    ticks: HashMap<u32, u64>,
    /// Every PostgreSQL process (the whole server: anything else using it counts too).
    postgres: Vec<u32>,
    /// (busy, total) ticks of all CPUs, from `/proc/stat`.
    machine: (u64, u64),
}

impl Pids {
    fn sample(&self) -> Result<Sample> {
        let mut ticks = HashMap::new();
        for pid in self
            .replicas
            .iter()
            .chain(&self.agents)
            .copied()
            .chain([std::process::id()])
        {
            ticks.insert(pid, process_ticks(pid).map_or(0, |(_, t)| t));
        }
        let mut postgres = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some((name, t)) = process_ticks(pid)
                && name == "postgres"
            {
                postgres.push(pid);
                ticks.insert(pid, t);
            }
        }
        Ok(Sample {
            ticks,
            postgres,
            machine: machine_ticks()?,
        })
    }
}

/// The command name and user plus system ticks of a process.
fn process_ticks(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// (busy, total) ticks of all CPUs: the first line of `/proc/stat`.
fn machine_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat (Linux only)")?;
    let values: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .ok_or_else(|| anyhow!("malformed /proc/stat"))?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    // idle and iowait are the 4th and 5th values.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// `(task id, attempt)` of every execution the agents logged, with how often each ran.
fn agent_executions(agents: &[AgentProcess]) -> HashMap<(String, i32), usize> {
    let mut seen = HashMap::new();
    for (run, n) in agents.iter().flat_map(|a| a.executions()) {
        *seen.entry(run).or_insert(0) += n;
    }
    seen
}

/// A database created on the shared PostgreSQL for one configuration, dropped after it.
struct Database {
    url: String,
    base: String,
    name: String,
}

impl Database {
    fn create(base: &str) -> Result<Database> {
        let name = format!("flotilla_bench_{}", uuid::Uuid::new_v4().simple());
        psql(base, &format!("CREATE DATABASE {name}"))?;
        let (prefix, _) = base
            .rsplit_once('/')
            .ok_or_else(|| anyhow!("the PostgreSQL URL {base} names no database"))?;
        Ok(Database {
            url: format!("{prefix}/{name}"),
            base: base.to_owned(),
            name,
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(
            &self.base,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .args([url, "-qc", sql])
        .output()
        .context("running psql (PostgreSQL's client)")?;
    if !out.status.success() {
        bail!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The 1-minute load average, to judge how busy the (shared) machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}
