//! End-to-end benchmark of the control plane (docs/design.md §4, §9): `cargo bench -p flotilla --bench e2e`.
//!
//! Everything runs in this one process, over real HTTP on loopback: the control plane
//! (`flotilla_server::start`), zero-work agents served by the agent SDK and registered through
//! `POST /v1/agents`, and the submitters (`flotilla-client`). Scenarios:
//!
//! - `sqlite`, `postgres`: throughput in tasks/s, from the first submission until every task is
//!   terminal in the store (every state change durable: SQLite runs with `synchronous=FULL`).
//! - `latency`: the control plane's added latency at a fixed rate. An open-loop generator starts,
//!   on every tick, one task (submit, then long-poll `GET /v1/tasks/{id}?wait=10`) and one direct
//!   `POST /execute` to the same agent with the control plane's own dispatch client; the added
//!   latency is the difference of their percentiles.
//! - `rss`: resident memory with 100,000 tasks queued for a pool that has no instance.
//!
//! Pick scenarios with `FLOTILLA_BENCH=sqlite,postgres,latency,rss` (or as arguments after `--`),
//! and sizes with the variables read in [`Settings::from_env`]; `FLOTILLA_BENCH_SIZE=tiny` runs a
//! version small enough for CI. `FLOTILLA_BENCH_ENFORCE=1` exits non-zero when a floor is missed.
//! Server logs are silent unless `RUST_LOG` is set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use anyhow::{Context, Result, anyhow, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use flotilla_agent::{Agent, AgentError, RunningAgent, RuntimeConfig};
use flotilla_client::Client;
use flotilla_core::config::{self, Database};
use flotilla_core::id::TaskId;
use flotilla_core::task::TaskStatus;
use flotilla_core::wire::{ExecuteRequest, ExecuteResponse, SubmitTask};
use flotilla_server::scheduler::dispatch;
use flotilla_server::{RunningServer, StartOptions};
use flotilla_store::prelude::*;
use flotilla_store::{DynStore, PostgresStore};
use hdrhistogram::Histogram;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The admin key the benchmark's control planes are started with (never a real deployment's).
const BENCH_KEY: &str = "flt_bench_4lZx9qT2mWv7Rk0sNc3YhB8pDe6GuJ1aFo5iXtLyQ3m";
/// The agent type the zero-work agents serve.
const FAST: &str = "bench";
/// A pool with no instance: its tasks stay queued (the `rss` scenario).
const PARKED: &str = "bench_parked";
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Floors of the performance issue on the 2-core reference machine.
const FLOOR_SQLITE_TPS: f64 = 2_000.0;
const FLOOR_ADDED_P99_MS: f64 = 5.0;
const FLOOR_RSS_MIB: f64 = 100.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Sqlite,
    Postgres,
    Latency,
    Rss,
}

impl Scenario {
    fn parse(name: &str) -> Result<Scenario> {
        Ok(match name.trim() {
            "sqlite" => Scenario::Sqlite,
            "postgres" | "pg" => Scenario::Postgres,
            "latency" => Scenario::Latency,
            "rss" | "memory" => Scenario::Rss,
            other => bail!("unknown scenario `{other}`; expected sqlite, postgres, latency or rss"),
        })
    }
}

/// What to run and how big.
#[derive(Debug)]
struct Settings {
    scenarios: Vec<Scenario>,
    /// Tasks per throughput run.
    tasks: usize,
    /// Zero-work agent instances in the throughput runs.
    agents: usize,
    /// Capacity of each instance.
    capacity: u32,
    /// Concurrent submitters (closed loop: each sends its next task when the last was accepted).
    submitters: usize,
    /// Tenants the submitters of the throughput runs are spread over, round robin (the first is
    /// the default tenant): with more than one, the dispatcher shares each round's slots
    /// between them (fair share).
    tenants: usize,
    /// Tasks per second of the latency generator.
    rate: u32,
    /// Measured length of the latency run (after one second of warm-up).
    latency_secs: f64,
    /// Store of the latency run.
    latency_backend: Backend,
    /// Tasks queued in the `rss` scenario.
    rss_tasks: usize,
    postgres_url: String,
    enforce: bool,
    /// A smoke run (`FLOTILLA_BENCH_SIZE=tiny`): floors are not judged, only outcomes.
    tiny: bool,
}

impl Settings {
    /// `FLOTILLA_BENCH`, `FLOTILLA_BENCH_SIZE=tiny`, `FLOTILLA_BENCH_TASKS`, `…_AGENTS`,
    /// `…_CAPACITY`, `…_SUBMITTERS`, `…_TENANTS`, `…_RATE`, `…_LATENCY_SECS`, `…_LATENCY_BACKEND`
    /// (`sqlite` or `postgres`), `…_RSS_TASKS`, `…_ENFORCE`, and `FLOTILLA_TEST_POSTGRES_URL`.
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
        // Scenario names may come as arguments (`-- sqlite latency`); cargo adds `--bench`.
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        let list = if args.is_empty() {
            std::env::var("FLOTILLA_BENCH")
                .unwrap_or_else(|_| "rss,latency,sqlite,postgres".to_owned())
        } else {
            args.join(",")
        };
        let mut scenarios = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Scenario::parse)
            .collect::<Result<Vec<_>>>()?;
        // The memory figure first, before other scenarios have grown the heap; then latency,
        // before the throughput runs leave the disk busy with checkpoints (their write bursts
        // make fsync latency spike for a while afterwards, on SQLite's file and PostgreSQL's).
        scenarios.sort_by_key(|s| match s {
            Scenario::Rss => 0,
            Scenario::Latency => 1,
            _ => 2,
        });
        scenarios.dedup();
        let postgres_url = std::env::var("FLOTILLA_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let latency_backend = match std::env::var("FLOTILLA_BENCH_LATENCY_BACKEND").as_deref() {
            Ok("postgres") => Backend::Postgres(postgres_url.clone()),
            Ok("sqlite") | Err(_) => Backend::Sqlite,
            Ok(other) => {
                bail!("FLOTILLA_BENCH_LATENCY_BACKEND={other}: expected sqlite or postgres")
            }
        };
        Ok(Settings {
            scenarios,
            tasks: num("FLOTILLA_BENCH_TASKS", 20_000.0, 500.0)? as usize,
            agents: num("FLOTILLA_BENCH_AGENTS", 4.0, 2.0)? as usize,
            capacity: num("FLOTILLA_BENCH_CAPACITY", 64.0, 16.0)? as u32,
            submitters: num("FLOTILLA_BENCH_SUBMITTERS", 64.0, 16.0)? as usize,
            tenants: (num("FLOTILLA_BENCH_TENANTS", 1.0, 1.0)? as usize).max(1),
            rate: num("FLOTILLA_BENCH_RATE", 500.0, 200.0)? as u32,
            latency_secs: num("FLOTILLA_BENCH_LATENCY_SECS", 10.0, 1.0)?,
            latency_backend,
            rss_tasks: num("FLOTILLA_BENCH_RSS_TASKS", 100_000.0, 1_000.0)? as usize,
            postgres_url,
            tiny,
            enforce: std::env::var("FLOTILLA_BENCH_ENFORCE").is_ok_and(|v| v == "1" || v == "true"),
        })
    }
}

/// One line of the summary: a figure, its floor and whether it met it.
struct Row {
    metric: String,
    value: String,
    floor: String,
    ok: Option<bool>,
    /// A performance floor (not judged in a tiny run), as opposed to a correctness check.
    performance: bool,
}

impl Row {
    fn info(metric: impl Into<String>, value: impl Into<String>) -> Row {
        Row {
            metric: metric.into(),
            value: value.into(),
            floor: String::new(),
            ok: None,
            performance: false,
        }
    }

    fn checked(
        metric: impl Into<String>,
        value: impl Into<String>,
        floor: impl Into<String>,
        ok: bool,
    ) -> Row {
        Row {
            metric: metric.into(),
            value: value.into(),
            floor: floor.into(),
            ok: Some(ok),
            performance: false,
        }
    }

    fn floor(
        metric: impl Into<String>,
        value: impl Into<String>,
        floor: impl Into<String>,
        ok: bool,
    ) -> Row {
        Row {
            performance: true,
            ..Row::checked(metric, value, floor, ok)
        }
    }
}

fn main() -> Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let settings = Settings::from_env()?;
    // One runtime with a worker per CPU, as `flotilla serve` has.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = runtime.block_on(run(&settings))?;
    if settings.tiny {
        for row in rows.iter_mut().filter(|r| r.performance) {
            row.ok = None;
            row.floor.push_str(" (full run only)");
        }
    }

    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["metric", "value", "floor", "verdict"]);
    for row in &rows {
        let verdict = match row.ok {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        table.add_row([
            row.metric.as_str(),
            row.value.as_str(),
            row.floor.as_str(),
            verdict,
        ]);
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "\nFlotilla end-to-end benchmark ({cpus} CPUs; server, agents and clients in one process)\n{table}"
    );
    let missed = rows.iter().filter(|r| r.ok == Some(false)).count();
    if missed > 0 && settings.enforce {
        bail!("{missed} floor(s) missed");
    }
    Ok(())
}

async fn run(settings: &Settings) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for scenario in &settings.scenarios {
        eprintln!("== {scenario:?} (load average {})", load_average());
        match scenario {
            Scenario::Rss => rows.extend(rss(settings).await?),
            Scenario::Sqlite => rows.extend(throughput(settings, Backend::Sqlite).await?),
            Scenario::Postgres => match Plane::probe_postgres(&settings.postgres_url).await {
                Ok(()) => rows.extend(
                    throughput(settings, Backend::Postgres(settings.postgres_url.clone())).await?,
                ),
                Err(e) => rows.push(Row::info("postgres: throughput", format!("skipped: {e}"))),
            },
            Scenario::Latency => rows.extend(latency(settings).await?),
        }
    }
    Ok(rows)
}

// ------------------------------------------------------------------------------------------------
// Scenarios

/// Submits `settings.tasks` tasks with `settings.submitters` concurrent clients and waits until
/// every one is terminal.
async fn throughput(settings: &Settings, backend: Backend) -> Result<Vec<Row>> {
    let label = backend.label();
    let plane = Plane::start(&backend, settings.agents, settings.capacity).await?;
    let clients = plane.tenants(settings.tenants).await?;

    // Warm-up: connections to the server and to the agents, the store's caches.
    let warm = (settings.tasks / 10).clamp(1, 1_000);
    submit_all(&clients, FAST, warm, settings.submitters).await?;
    plane
        .wait_terminal(warm as u64, Duration::from_secs(60))
        .await?;

    let n = settings.tasks;
    let load = load_average();
    let cpu_before = cpu_seconds()?;
    let started = Instant::now();
    let failed_submits = submit_all(&clients, FAST, n, settings.submitters).await?;
    let submitted = started.elapsed();
    let limit = Duration::from_secs(120) + Duration::from_millis(n as u64 * 5);
    let counts = plane.wait_terminal((warm + n) as u64, limit).await?;
    let elapsed = started.elapsed();
    let cpu_us = (cpu_seconds()? - cpu_before) / n as f64 * 1e6;
    plane.stop().await?;

    let tps = n as f64 / elapsed.as_secs_f64();
    let accepted = n as f64 / submitted.as_secs_f64();
    let succeeded = count_of(&counts, TaskStatus::Succeeded).saturating_sub(warm as u64);
    let other: Vec<String> = counts
        .iter()
        .filter(|(s, n)| *s != TaskStatus::Succeeded && *n > 0)
        .map(|(s, n)| format!("{s}={n}"))
        .collect();
    let all_ok = succeeded == n as u64 && failed_submits == 0 && other.is_empty();
    eprintln!(
        "{label}: {n} tasks in {:.2} s ({tps:.0} tasks/s); accepted in {:.2} s ({accepted:.0}/s); \
         {succeeded} succeeded, other {other:?}, failed submissions {failed_submits}; {cpu_us:.0} µs CPU/task",
        elapsed.as_secs_f64(),
        submitted.as_secs_f64(),
    );

    let setup = format!(
        "{} agents × {} capacity, {} submitters, {} tenant(s)",
        settings.agents, settings.capacity, settings.submitters, settings.tenants
    );
    let value = format!(
        "{tps:.0} tasks/s ({n} tasks in {:.2} s; {setup})",
        elapsed.as_secs_f64()
    );
    let metric = format!("{label}: throughput");
    let mut rows = vec![if backend == Backend::Sqlite {
        Row::floor(
            metric,
            value,
            format!("≥ {FLOOR_SQLITE_TPS:.0}"),
            tps >= FLOOR_SQLITE_TPS,
        )
    } else {
        Row::info(metric, value)
    }];
    rows.push(Row::info(
        format!("{label}: submissions accepted"),
        format!("{accepted:.0} tasks/s (202, durable)"),
    ));
    rows.push(Row::info(
        format!("{label}: CPU per task"),
        format!(
            "{cpu_us:.0} µs, whole process (clients, server, agents, store); load average {load}"
        ),
    ));
    let statuses = format!(
        "succeeded={succeeded} {} failed_submissions={failed_submits}",
        other.join(" ")
    );
    rows.push(Row::checked(
        format!("{label}: outcomes"),
        statuses,
        "all succeeded",
        all_ok,
    ));
    Ok(rows)
}

/// Open-loop load at `settings.rate`: every tick starts one task through the control plane and
/// one direct call to the same agent.
async fn latency(settings: &Settings) -> Result<Vec<Row>> {
    let backend = settings.latency_backend.clone();
    let load = load_average();
    let plane = Plane::start(&backend, 1, settings.capacity).await?;
    let agent_url = plane
        .agents
        .first()
        .map(|a| a.url.clone())
        .ok_or_else(|| anyhow!("no agent started"))?;
    let direct_http = Arc::new(flotilla_server::agent_clients::AgentClients::new(
        None,
        flotilla_core::egress::EgressPolicy::default(),
    )?);
    // Direct calls are signed like the control plane's, with the instance's secret.
    let agent_secret: Arc<str> = plane
        .store
        .list_agents()
        .await?
        .into_iter()
        .find(|a| a.url == agent_url)
        .map(|a| a.signing_secret.into())
        .ok_or_else(|| anyhow!("the agent is not in the store"))?;

    let period = Duration::from_secs_f64(1.0 / f64::from(settings.rate.max(1)));
    let warm = settings.rate as usize;
    let measured = (settings.latency_secs * f64::from(settings.rate)) as usize;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Path, Result<u64, String>)>();
    let tracker = tokio_util::task::TaskTracker::new();
    let mut ticks = tokio::time::interval(period);
    // Open loop: a late tick is made up at once, so the offered rate holds.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    for i in 0..warm + measured {
        ticks.tick().await;
        let record = i >= warm;
        let (client, sender) = (plane.client.clone(), tx.clone());
        tracker.spawn(async move {
            let sample = timed(through_control_plane(&client)).await;
            if record {
                let _ = sender.send((Path::ControlPlane, sample));
            }
        });
        let (http, url, sender) = (direct_http.clone(), agent_url.clone(), tx.clone());
        let secret = agent_secret.clone();
        tracker.spawn(async move {
            let sample = timed(direct_execute(&http, &url, &secret)).await;
            if record {
                let _ = sender.send((Path::Direct, sample));
            }
        });
    }
    let offered = (warm + measured) as f64 / started.elapsed().as_secs_f64();
    tracker.close();
    tracker.wait().await;
    drop(tx);
    plane.stop().await?;

    let mut through = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut direct = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut errors = Vec::new();
    while let Some((path, sample)) = rx.recv().await {
        match (path, sample) {
            (Path::ControlPlane, Ok(us)) => through.record(us)?,
            (Path::Direct, Ok(us)) => direct.record(us)?,
            (_, Err(e)) => errors.push(e),
        }
    }
    if let Some(first) = errors.first() {
        eprintln!("latency: {} errors, the first: {first}", errors.len());
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let describe = |h: &Histogram<u64>| {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (n={})",
            ms(h, 0.5),
            ms(h, 0.99),
            ms(h, 0.999),
            h.max() as f64 / 1000.0,
            h.len()
        )
    };
    let added50 = ms(&through, 0.5) - ms(&direct, 0.5);
    let added99 = ms(&through, 0.99) - ms(&direct, 0.99);
    eprintln!(
        "latency: offered {offered:.0}/s; through the control plane {}; direct {}",
        describe(&through),
        describe(&direct)
    );
    let label = backend.label();
    Ok(vec![
        Row::info(
            "latency: offered rate",
            format!(
                "{offered:.0} tasks/s for {:.1} s (+1 s warm-up), {label}; load average {load}",
                settings.latency_secs
            ),
        ),
        Row::info("latency: submit → terminal (long-poll)", describe(&through)),
        Row::info("latency: direct POST /execute", describe(&direct)),
        Row::info("latency: added p50", format!("{added50:.2} ms")),
        Row::floor(
            "latency: added p99",
            format!("{added99:.2} ms"),
            format!("≤ {FLOOR_ADDED_P99_MS} ms"),
            added99 <= FLOOR_ADDED_P99_MS,
        ),
        Row::checked(
            "latency: errors",
            errors.len().to_string(),
            "0",
            errors.is_empty(),
        ),
    ])
}

/// Queues `settings.rss_tasks` tasks for a pool with no instance and reads the resident memory.
async fn rss(settings: &Settings) -> Result<Vec<Row>> {
    let before = proc_status_kib("VmRSS:")?;
    let plane = Plane::start(&Backend::Sqlite, 0, settings.capacity).await?;
    let idle = proc_status_kib("VmRSS:")?;
    let n = settings.rss_tasks;
    let started = Instant::now();
    let failed = submit_all(
        std::slice::from_ref(&plane.client),
        PARKED,
        n,
        settings.submitters,
    )
    .await?;
    let took = started.elapsed();
    // Let the writers and the allocator settle before reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let queued = plane
        .store
        .queued_by_type(None)
        .await?
        .get(PARKED)
        .copied()
        .unwrap_or(0);
    let loaded = proc_status_kib("VmRSS:")?;
    let peak = proc_status_kib("VmHWM:")?;
    plane.stop().await?;

    let mib = |kib: u64| kib as f64 / 1024.0;
    eprintln!(
        "rss: {queued} queued ({failed} failed submissions, {:.0}/s); VmRSS before start {:.1} MiB, \
         idle {:.1} MiB, loaded {:.1} MiB, peak {:.1} MiB",
        n as f64 / took.as_secs_f64(),
        mib(before),
        mib(idle),
        mib(loaded),
        mib(peak)
    );
    Ok(vec![
        Row::checked(
            "rss: tasks queued",
            format!("{queued} (failed submissions {failed})"),
            n.to_string(),
            queued == n as u64 && failed == 0,
        ),
        Row::floor(
            format!("rss: VmRSS with {queued} queued"),
            format!(
                "{:.1} MiB (+{:.1} MiB over the process before start; idle server {:.1} MiB; peak {:.1} MiB)",
                mib(loaded),
                mib(loaded.saturating_sub(before)),
                mib(idle),
                mib(peak)
            ),
            format!("< {FLOOR_RSS_MIB} MiB"),
            mib(loaded) < FLOOR_RSS_MIB,
        ),
    ])
}

// ------------------------------------------------------------------------------------------------
// The control plane under test

#[derive(Clone, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

/// Which way a latency sample went.
#[derive(Clone, Copy, Debug)]
enum Path {
    ControlPlane,
    Direct,
}

/// A control plane with its agents, a client, and what must be cleaned up after it.
struct Plane {
    server: RunningServer,
    store: DynStore,
    client: Client,
    /// The server's `http://` address.
    base_url: String,
    agents: Vec<RunningAgent>,
    stop_agents: CancellationToken,
    /// The data directory (SQLite's file); removed on drop.
    _data_dir: tempfile::TempDir,
    /// The PostgreSQL store and its schema, dropped at the end.
    postgres: Option<(Arc<PostgresStore>, String, String)>,
}

impl Plane {
    /// Clients of `n` tenants: the admin's (the default tenant) and a submitter key of each of
    /// `n - 1` tenants created through the API.
    async fn tenants(&self, n: usize) -> Result<Vec<Client>> {
        let mut clients = vec![self.client.clone()];
        for i in 1..n {
            let tenant = self
                .client
                .create_tenant(&flotilla_core::tenant::NewTenant {
                    name: format!("bench-{i}"),
                    rate_limit: None,
                })
                .await?;
            let request = flotilla_core::auth::NewKeyRequest {
                name: format!("bench submitter {i}"),
                role: flotilla_core::auth::Role::Submitter,
                expires_at: None,
                rate_limit: None,
            };
            let key = self
                .client
                .create_key(&request, Some(&tenant.id.to_string()))
                .await?;
            clients.push(Client::new(&self.base_url, Some(key.key))?);
        }
        Ok(clients)
    }

    async fn probe_postgres(url: &str) -> Result<()> {
        let store = tokio::time::timeout(Duration::from_secs(5), PostgresStore::connect(url, 1))
            .await
            .map_err(|_| anyhow!("PostgreSQL at {url} did not answer within 5 s"))??;
        store.close().await;
        Ok(())
    }

    /// Starts a control plane on 127.0.0.1:0 with pools `bench` and `bench_parked`, and
    /// `agents` zero-work instances of type `bench` registered through the API.
    async fn start(backend: &Backend, agents: usize, capacity: u32) -> Result<Plane> {
        let data_dir = tempfile::tempdir()?;
        let pool = |name: &str| {
            toml::Value::Table(toml::Table::from_iter([
                ("name".to_owned(), toml::Value::from(name)),
                ("provisioner".to_owned(), toml::Value::from("static")),
            ]))
        };
        let mut overrides = vec![
            ("server.listen".to_owned(), toml::Value::from("127.0.0.1:0")),
            (
                "server.data_dir".to_owned(),
                toml::Value::from(data_dir.path().display().to_string()),
            ),
            (
                "pools".to_owned(),
                toml::Value::Array(vec![pool(FAST), pool(PARKED)]),
            ),
            // The benchmark measures the task path: the API's per-key and per-tenant limits
            // (1,000 and 5,000 requests/s by default) would cap it, as they would any client.
            ("rate_limits.per_key".to_owned(), toml::Value::from("off")),
            (
                "rate_limits.per_tenant".to_owned(),
                toml::Value::from("off"),
            ),
        ];
        if let Backend::Postgres(url) = backend {
            overrides.push(("database.url".to_owned(), toml::Value::from(url.as_str())));
        }
        let config = config::load(None, &[], &overrides)?;
        let (store, postgres): (DynStore, _) = match &config.database {
            Database::Sqlite(_) => (
                flotilla_store::open(&config.database, config.database_max_connections).await?,
                None,
            ),
            Database::Postgres(url) => {
                let schema = format!(
                    "bench_{}_{}",
                    std::process::id(),
                    chrono::Utc::now().timestamp_millis()
                );
                let pg = Arc::new(
                    PostgresStore::connect_in_schema(url, &schema, config.database_max_connections)
                        .await?,
                );
                pg.migrate().await?;
                (pg.clone() as DynStore, Some((pg, url.clone(), schema)))
            }
        };
        let options = StartOptions {
            bootstrap_key: Some(BENCH_KEY.to_owned()),
            ..StartOptions::default()
        };
        let server = flotilla_server::start(config, store.clone(), options).await?;
        let base = format!("http://{}", server.addr);
        let client = Client::new(&base, Some(BENCH_KEY.to_owned()))?;

        let stop_agents = CancellationToken::new();
        let mut running = Vec::with_capacity(agents);
        for _ in 0..agents {
            let config = RuntimeConfig {
                agent_type: FAST.to_owned(),
                capacity,
                listen: "127.0.0.1:0".parse()?,
                advertise_url: None,
                control_plane: base.clone(),
                key: BENCH_KEY.to_owned(),
                weight: None,
                drain_timeout: Duration::from_secs(5),
                metadata: None,
                version: None,
                security: flotilla_agent::AgentSecurity::default(),
            };
            running.push(flotilla_agent::start(ZeroWork, config, stop_agents.clone()).await?);
        }
        Ok(Plane {
            server,
            store,
            client,
            base_url: base,
            agents: running,
            stop_agents,
            _data_dir: data_dir,
            postgres,
        })
    }

    /// Polls the store until at least `n` tasks are terminal; returns the counts per status.
    async fn wait_terminal(&self, n: u64, limit: Duration) -> Result<Vec<(TaskStatus, u64)>> {
        let started = Instant::now();
        loop {
            let counts = self.store.task_counts_by_status().await?;
            let terminal: u64 = counts
                .iter()
                .filter(|(s, _)| s.is_terminal())
                .map(|(_, n)| n)
                .sum();
            if terminal >= n {
                return Ok(counts);
            }
            if started.elapsed() > limit {
                bail!("only {terminal} of {n} tasks terminal after {limit:?}: {counts:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the agents (they drain and deregister), then the server; drops the PostgreSQL schema.
    async fn stop(self) -> Result<()> {
        self.stop_agents.cancel();
        for agent in self.agents {
            agent.wait().await?;
        }
        self.server.stop().await;
        if let Some((pg, url, schema)) = self.postgres {
            pg.close().await;
            PostgresStore::drop_schema(&url, &schema).await?;
        }
        Ok(())
    }
}

/// An agent that does no work: it answers at once.
struct ZeroWork;

impl Agent for ZeroWork {
    fn execute(
        &self,
        request: ExecuteRequest,
    ) -> impl Future<Output = Result<ExecuteResponse, AgentError>> + Send {
        std::future::ready(Ok(ExecuteResponse {
            output: json!({"attempt": request.attempt}),
            usage: None,
        }))
    }
}

// ------------------------------------------------------------------------------------------------
// Load generation and measurement

/// Submits `n` tasks of `agent_type` from `concurrency` closed-loop submitters sharing one client
/// (one pool of keep-alive connections); returns how many submissions failed.
async fn submit_all(
    clients: &[Client],
    agent_type: &str,
    n: usize,
    concurrency: usize,
) -> Result<usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut submitters = tokio::task::JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let (client, next, failed, agent_type) = (
            clients[worker % clients.len()].clone(),
            next.clone(),
            failed.clone(),
            agent_type.to_owned(),
        );
        submitters.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let task =
                    SubmitTask::new(agent_type.as_str(), json!({"i": i, "prompt": "benchmark"}));
                if let Err(e) = client.submit_task(&task).await
                    && failed.fetch_add(1, Ordering::Relaxed) == 0
                {
                    eprintln!("A submission failed (only the first is shown): {e}");
                }
            }
        });
    }
    while let Some(joined) = submitters.join_next().await {
        joined?;
    }
    Ok(failed.load(Ordering::Relaxed))
}

/// Submit, then long-poll until terminal; an error unless the task succeeded.
async fn through_control_plane(client: &Client) -> Result<(), String> {
    let task = client
        .submit_task(&SubmitTask::new(FAST, json!({"prompt": "latency"})))
        .await
        .map_err(|e| e.to_string())?;
    let done = client
        .get_task(task.id, Some(Duration::from_secs(10)))
        .await
        .map_err(|e| e.to_string())?;
    match done.status {
        TaskStatus::Succeeded => Ok(()),
        other => Err(format!("task {} ended {other}", task.id)),
    }
}

/// The control plane's own dispatch call, made directly.
async fn direct_execute(
    http: &flotilla_server::agent_clients::AgentClients,
    url: &str,
    signing_secret: &str,
) -> Result<(), String> {
    let request = ExecuteRequest {
        task_id: TaskId(uuid::Uuid::now_v7()),
        attempt: 1,
        agent_type: FAST.to_owned(),
        input: json!({"prompt": "latency"}),
        deadline: chrono::Utc::now() + chrono::Duration::seconds(10),
        model_gateway: None,
    };
    let target = dispatch::Target {
        base_url: url,
        signing_secret,
    };
    let now = chrono::Utc::now();
    dispatch::execute(
        http,
        None,
        target,
        &request,
        None,
        now,
        Duration::from_secs(10),
    )
    .await
    .map(|_| ())
    .map_err(|e| e.describe())
}

/// Runs `call` and returns its duration in microseconds.
async fn timed(call: impl Future<Output = Result<(), String>>) -> Result<u64, String> {
    let started = Instant::now();
    call.await?;
    Ok(started.elapsed().as_micros().max(1) as u64)
}

fn count_of(counts: &[(TaskStatus, u64)], status: TaskStatus) -> u64 {
    counts
        .iter()
        .find(|(s, _)| *s == status)
        .map_or(0, |(_, n)| *n)
}

/// A `kB` line of `/proc/self/status`, e.g. `VmRSS:`.
fn proc_status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status (Linux only)")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/self/status"))
}

/// User plus system CPU time of this process, in seconds (`/proc/self/stat`, 100 ticks a second).
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .context("reading /proc/self/stat (Linux only)")?;
    // Fields after the command name, which ends with the last `)`: utime and stime are 12 and 13.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("malformed /proc/self/stat"))
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// The 1-minute load average, to judge how busy the (shared) machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}
