//! Benchmark of the model gateway (issue 5's performance floor): `cargo bench -p flotilla --bench
//! gateway`.
//!
//! Three targets answer the same `POST …/chat/completions` over real HTTP on loopback, each from
//! its own process:
//!
//! - **direct**: the mock OpenAI-compatible upstream (`flotilla_testkit::MockProvider`), run in a
//!   child process of this benchmark (this binary again, with `FLOTILLA_BENCH_GATEWAY_ROLE=mock`);
//! - **Flotilla**: the release `flotilla serve` on SQLite in front of that mock, with
//!   authentication, the key's and tenant's rate limits, the gateway's request/token/cost limits,
//!   a monthly budget, the usage ledger and the metrics all on (`/metrics` scraped every 10 s);
//! - **LiteLLM**: LiteLLM's proxy in front of the same mock (`bench/gateway/litellm.yaml`), when
//!   `target/bench-venv/bin/litellm` exists (`bench/gateway/setup-litellm.sh` installs it);
//!   skipped with a message otherwise.
//!
//! Each target gets an open-loop load at a fixed rate (default 1,000 requests/s, 20 s after 2 s
//! of warm-up) with the latency of every request in an HdrHistogram, and a closed-loop run (64
//! workers, 10 s) for the most requests per second. The added latency is a target's percentile
//! minus the direct call's, measured in the same run. Order: direct and Flotilla, the soak, then
//! LiteLLM (throughput; if it cannot take the fixed rate, an open loop at half its throughput with
//! a direct baseline at that rate; the fixed rate last, since an overloaded proxy keeps working
//! off abandoned calls for minutes). Flotilla's resident memory (`VmRSS`) is read before, during
//! (every second) and after the load; `FLOTILLA_BENCH_SOAK_S=600` adds a soak at the fixed rate
//! with a sample every 30 s. At the end Flotilla is stopped (SIGTERM, which flushes the ledger)
//! and every successful call is looked for in its metrics and its usage rows.
//!
//! Settings (environment): `FLOTILLA_BENCH_RATE` (1000), `FLOTILLA_BENCH_SECS` (20),
//! `FLOTILLA_BENCH_WARM_SECS` (2), `FLOTILLA_BENCH_WORKERS` (64), `FLOTILLA_BENCH_THROUGHPUT_SECS`
//! (10), `FLOTILLA_BENCH_SOAK_S` (0: no soak), `FLOTILLA_BENCH_SOAK_RATE` (the rate),
//! `FLOTILLA_BENCH_LITELLM` (path of the `litellm` executable; `off` skips it),
//! `FLOTILLA_BENCH_LITELLM_WORKERS` (one per CPU), `FLOTILLA_BENCH_ENFORCE=1` (exit non-zero when
//! a floor is missed). It prints markdown tables on stdout; progress goes to stderr.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use anyhow::{Context, Result, anyhow, bail};
use flotilla_testkit::{MockProvider, ServerProcess};
use hdrhistogram::Histogram;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The bootstrap admin key of the benchmark's `flotilla serve` (never a real deployment's).
const ADMIN_KEY: &str = "flt_gwbench_Q3mT8vL1xK6pR9sW2yB5nD7fH0jC4gZaEe4lZx9qT2m";
/// LiteLLM's master key (`bench/gateway/litellm.yaml`).
const LITELLM_KEY: &str = "sk-flotilla-bench";
/// Set in the child process that serves the mock upstream.
const ROLE_ENV: &str = "FLOTILLA_BENCH_GATEWAY_ROLE";

/// Most calls the open loop keeps waiting at once (a target that cannot keep up).
const MAX_IN_FLIGHT: usize = 5_000;

/// Floors of issue 5 on the 2-core reference machine.
const FLOOR_ADDED_P99_MS: f64 = 1.0;
const FLOOR_THROUGHPUT: f64 = 5_000.0;
const FLOOR_RSS_MIB: f64 = 100.0;

/// The body every target gets; the mock answers model `ok` (the gateway's and LiteLLM's `mock`
/// map to it) with a fixed completion and usage.
const BODY_UPSTREAM: &str =
    r#"{"model":"ok","messages":[{"role":"user","content":"hi"}],"max_tokens":16}"#;
const BODY_GATEWAY: &str =
    r#"{"model":"mock","messages":[{"role":"user","content":"hi"}],"max_tokens":16}"#;

struct Settings {
    rate: u32,
    secs: f64,
    warm_secs: f64,
    workers: usize,
    throughput_secs: f64,
    soak_secs: f64,
    soak_rate: u32,
    litellm: Option<PathBuf>,
    litellm_workers: u32,
    enforce: bool,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let num = |var: &str, default: f64| -> Result<f64> {
            match std::env::var(var) {
                Ok(v) => v
                    .parse::<f64>()
                    .with_context(|| format!("{var}={v} is not a number")),
                Err(_) => Ok(default),
            }
        };
        let rate = num("FLOTILLA_BENCH_RATE", 1_000.0)?.max(1.0) as u32;
        let litellm = match std::env::var("FLOTILLA_BENCH_LITELLM") {
            Ok(v) if v == "off" => None,
            Ok(v) => Some(PathBuf::from(v)),
            Err(_) => Some(workspace().join("target/bench-venv/bin/litellm")),
        };
        Ok(Settings {
            rate,
            secs: num("FLOTILLA_BENCH_SECS", 20.0)?,
            warm_secs: num("FLOTILLA_BENCH_WARM_SECS", 2.0)?,
            workers: num("FLOTILLA_BENCH_WORKERS", 64.0)?.max(1.0) as usize,
            throughput_secs: num("FLOTILLA_BENCH_THROUGHPUT_SECS", 10.0)?,
            soak_secs: num("FLOTILLA_BENCH_SOAK_S", 0.0)?,
            soak_rate: num("FLOTILLA_BENCH_SOAK_RATE", f64::from(rate))?.max(1.0) as u32,
            litellm,
            // LiteLLM's advice: as many workers as CPUs.
            litellm_workers: num("FLOTILLA_BENCH_LITELLM_WORKERS", cpus() as f64)?.max(1.0) as u32,
            enforce: std::env::var("FLOTILLA_BENCH_ENFORCE").is_ok_and(|v| v == "1" || v == "true"),
        })
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn main() -> Result<()> {
    if std::env::var(ROLE_ENV).is_ok_and(|r| r == "mock") {
        return serve_mock();
    }
    let settings = Settings::from_env()?;
    // An open loop against a proxy that cannot keep up opens a connection per waiting call.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    // The load generator: one runtime with a worker per CPU.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let missed = runtime.block_on(run(&settings))?;
    if missed > 0 && settings.enforce {
        bail!("{missed} floor(s) missed");
    }
    Ok(())
}

/// The child process: serves the mock on a free port, prints its base URL, and stops when its
/// standard input closes (the benchmark ended, however it ended).
fn serve_mock() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mock = runtime.block_on(MockProvider::start_with(false))?;
    println!("{}", mock.base_url);
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(mock);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// The run

/// One endpoint under load.
struct Target {
    name: &'static str,
    url: String,
    authorization: Option<String>,
    body: &'static str,
    /// The processes whose CPU and memory are the target's own.
    pid: u32,
    /// Successful calls over the whole run (to check the ledger against).
    ok: AtomicU64,
}

/// What an open-loop run measured.
struct OpenLoop {
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    offered: f64,
    cpu_us_per_request: f64,
    rss_max_kib: u64,
}

/// What a closed-loop run measured.
struct ClosedLoop {
    rps: f64,
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    cpu_us_per_request: f64,
    /// CPU of this process (the load generator) per request.
    client_cpu_us_per_request: f64,
    rss_max_kib: u64,
}

async fn run(settings: &Settings) -> Result<usize> {
    let started_at = chrono::Utc::now();
    eprintln!(
        "== gateway benchmark, {} (load average {})",
        started_at.format("%Y-%m-%d %H:%M UTC"),
        load_average()
    );
    let mock = MockProcess::start().await?;
    eprintln!("mock upstream at {} (pid {})", mock.base_url, mock.pid);

    let (flotilla, _flotilla_dir) = start_flotilla(&mock.base_url).await?;
    let flotilla_pid = flotilla
        .pid()
        .ok_or_else(|| anyhow!("flotilla serve is not running"))?;
    let flotilla_base = flotilla.base_url();
    let budget_via =
        create_budget(&flotilla_base, &flotilla.data_dir().join("flotilla.db")).await?;
    eprintln!("monthly budget of $1,000,000 set through {budget_via}");
    let rss_idle = rss_kib(flotilla_pid)?;
    eprintln!("flotilla serve at {flotilla_base} (pid {flotilla_pid}), VmRSS {rss_idle} kB idle");

    let litellm = match &settings.litellm {
        None => Err("skipped: FLOTILLA_BENCH_LITELLM=off".to_owned()),
        Some(bin) if !bin.exists() => Err(format!(
            "skipped: {} not found (run bench/gateway/setup-litellm.sh)",
            bin.display()
        )),
        Some(bin) => LiteLlm::start(bin, &mock.base_url, settings.litellm_workers)
            .await
            .map_err(|e| format!("skipped: LiteLLM did not start: {e:#}")),
    };
    if let Err(why) = &litellm {
        eprintln!("LiteLLM {why}");
    }

    let mut targets = vec![
        Arc::new(Target {
            name: "direct (mock)",
            url: format!("{}/chat/completions", mock.base_url),
            authorization: None,
            body: BODY_UPSTREAM,
            pid: mock.pid,
            ok: AtomicU64::new(0),
        }),
        Arc::new(Target {
            name: "Flotilla gateway",
            url: format!("{flotilla_base}/v1/chat/completions"),
            authorization: Some(format!("Bearer {ADMIN_KEY}")),
            body: BODY_GATEWAY,
            pid: flotilla_pid,
            ok: AtomicU64::new(0),
        }),
    ];
    if let Ok(l) = &litellm {
        targets.push(Arc::new(Target {
            name: "LiteLLM proxy",
            url: format!("{}/v1/chat/completions", l.base_url),
            authorization: Some(format!("Bearer {LITELLM_KEY}")),
            body: BODY_GATEWAY,
            pid: l.pid,
            ok: AtomicU64::new(0),
        }));
    }
    for t in &targets {
        let client = http_client(4)?;
        call(&client, t)
            .await
            .map_err(|e| anyhow!("{}: a first call failed: {e}", t.name))?;
        t.ok.fetch_add(1, Ordering::Relaxed);
    }

    // Scrape Flotilla's metrics every 10 s while it is under load, like a Prometheus would.
    let scraping = Arc::new(AtomicBool::new(true));
    let scraper = tokio::spawn(scrape_metrics(flotilla_base.clone(), scraping.clone()));

    // Direct and Flotilla first, then the soak, and LiteLLM last: a proxy overloaded by the
    // fixed rate keeps working off abandoned requests for minutes, which would take CPU from
    // the others.
    let mut open = Vec::new();
    for t in &targets[..2] {
        open.push(run_open(t, settings).await?);
    }
    let rss_after_open = rss_kib(flotilla_pid)?;
    let mut closed = Vec::new();
    for t in &targets[..2] {
        closed.push(run_closed(t, settings).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(flotilla_pid)?;
    let soak = if settings.soak_secs > 0.0 {
        soak(&targets[1], settings).await?
    } else {
        Vec::new()
    };

    // LiteLLM: throughput first; then, if it cannot take the fixed rate, an open loop at half
    // the throughput it reached (with the direct baseline at that rate, so its added latency
    // is known too); the fixed rate last.
    let mut slow = Vec::new();
    if let Some(t) = targets.get(2) {
        let c = run_closed(t, settings).await?;
        if c.rps < 2.0 * f64::from(settings.rate) {
            let rate = ((c.rps / 2.0).floor() as u32).max(1);
            eprintln!(
                "== open loop at {rate}/s (half of {}'s throughput): direct, then {}",
                t.name, t.name
            );
            drain(t).await;
            let base = open_loop(&targets[0], rate, settings.warm_secs, settings.secs).await?;
            let r = open_loop(t, rate, settings.warm_secs, settings.secs).await?;
            eprintln!(
                "   direct {}\n   {} {} | errors {}",
                describe(&base.latency),
                t.name,
                describe(&r.latency),
                r.errors
            );
            slow.push((t.name, rate, base, r));
        }
        closed.push(c);
        open.push(run_open(t, settings).await?);
    }
    let rss_hwm = proc_status_kib(flotilla_pid, "VmHWM:")?;
    scraping.store(false, Ordering::Relaxed);
    let scrapes = scraper.await?;

    // Metrics and ledger: every successful call counted and recorded.
    let metrics_ok = gateway_ok_count(&flotilla_base).await?;
    let mut flotilla = flotilla;
    flotilla
        .terminate()
        .await
        .map_err(|e| anyhow!("stopping flotilla serve: {e}"))?;
    let ledger_rows = usage_rows(&flotilla.data_dir().join("flotilla.db")).await?;
    let flotilla_ok = targets[1].ok.load(Ordering::Relaxed);
    let litellm_note = match &litellm {
        Ok(l) => format!(
            "LiteLLM proxy: {}, `bench/gateway/litellm.yaml`.",
            l.describe
        ),
        Err(why) => format!("LiteLLM: {why}"),
    };
    drop(litellm);
    drop(mock);

    let missed = report(
        settings,
        &started_at,
        &targets,
        &open,
        &closed,
        Memory {
            idle: rss_idle,
            after_open: rss_after_open,
            after: rss_after,
            hwm: rss_hwm,
        },
        &soak,
        &slow,
        Checks {
            flotilla_ok,
            metrics_ok,
            ledger_rows,
            scrapes,
        },
        &litellm_note,
    );
    Ok(missed)
}

struct Memory {
    idle: u64,
    after_open: u64,
    after: u64,
    hwm: u64,
}

struct Checks {
    flotilla_ok: u64,
    metrics_ok: u64,
    ledger_rows: u64,
    scrapes: u64,
}

/// One 30-second window of the soak.
struct SoakSample {
    at_s: f64,
    rss_kib: u64,
    latency: Histogram<u64>,
    errors: u64,
}

/// The open loop at the fixed rate, with progress on stderr.
async fn run_open(t: &Arc<Target>, settings: &Settings) -> Result<OpenLoop> {
    eprintln!(
        "== open loop: {} at {}/s for {} s (+{} s warm-up), load average {}",
        t.name,
        settings.rate,
        settings.secs,
        settings.warm_secs,
        load_average()
    );
    let r = open_loop(t, settings.rate, settings.warm_secs, settings.secs).await?;
    eprintln!(
        "   {} | errors {}{} | offered {:.0}/s | {:.0} µs CPU/request | VmRSS max {:.1} MiB",
        describe(&r.latency),
        r.errors,
        r.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        r.offered,
        r.cpu_us_per_request,
        mib(r.rss_max_kib)
    );
    if r.errors > 0 || ms(&r.latency, 0.5) > 1_000.0 {
        eprintln!(
            "   {} did not keep up with {}/s; waiting until it answers promptly again",
            t.name, settings.rate
        );
        drain(t).await;
    }
    Ok(r)
}

/// The closed loop, with progress on stderr.
async fn run_closed(t: &Arc<Target>, settings: &Settings) -> Result<ClosedLoop> {
    eprintln!(
        "== closed loop: {} with {} workers for {} s (+1 s warm-up), load average {}",
        t.name,
        settings.workers,
        settings.throughput_secs,
        load_average()
    );
    let r = closed_loop(t, settings.workers, settings.throughput_secs).await?;
    eprintln!(
        "   {:.0} requests/s | {} | errors {}{} | {:.0} µs CPU/request (client {:.0} µs) | VmRSS max {:.1} MiB",
        r.rps,
        describe(&r.latency),
        r.errors,
        r.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        r.cpu_us_per_request,
        r.client_cpu_us_per_request,
        mib(r.rss_max_kib)
    );
    Ok(r)
}

/// The fixed-rate load on Flotilla for `soak_secs`, in back-to-back 30 s windows.
async fn soak(target: &Arc<Target>, settings: &Settings) -> Result<Vec<SoakSample>> {
    let window = 30.0_f64.min(settings.soak_secs);
    let windows = (settings.soak_secs / window).ceil() as usize;
    eprintln!(
        "== soak: {} at {}/s for {} s, {windows} windows of {window} s",
        target.name, settings.soak_rate, settings.soak_secs
    );
    let started = Instant::now();
    let mut samples = Vec::with_capacity(windows);
    for _ in 0..windows {
        let r = open_loop(target, settings.soak_rate, 0.0, window).await?;
        let rss = rss_kib(target.pid)?;
        let at_s = started.elapsed().as_secs_f64();
        eprintln!(
            "   {at_s:>5.0} s: VmRSS {:.1} MiB, {}, errors {}{}",
            mib(rss),
            describe(&r.latency),
            r.errors,
            r.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        samples.push(SoakSample {
            at_s,
            rss_kib: rss,
            latency: r.latency,
            errors: r.errors,
        });
    }
    Ok(samples)
}

/// Waits (up to two minutes) until a call through `target` takes under 100 ms again: a proxy
/// overloaded by the open loop may still be working off requests whose callers gave up.
async fn drain(target: &Target) {
    let Ok(http) = http_client(1) else { return };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        let t0 = Instant::now();
        if call(&http, target).await.is_ok() && t0.elapsed() < Duration::from_millis(100) {
            target.ok.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ------------------------------------------------------------------------------------------------
// Load generation

fn http_client(pool: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(90))
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// One call: an error unless the answer is a 2xx with a completion in it.
async fn call(client: &reqwest::Client, target: &Target) -> Result<(), String> {
    let mut request = client
        .post(&target.url)
        .header(CONTENT_TYPE, "application/json")
        .body(target.body);
    if let Some(auth) = &target.authorization {
        request = request.header(AUTHORIZATION, auth);
    }
    let response = request.send().await.map_err(|e| chain(&e))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| chain(&e))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!(
            "{status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    if !body.windows(9).any(|w| w == b"\"choices\"") {
        return Err(format!(
            "no choices in the answer: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    Ok(())
}

/// An error with its causes.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Open loop: one call starts every 1/`rate` s whatever the earlier ones do (a late tick is made
/// up at once, so the offered rate holds); the latency of each is recorded after `warm_secs`.
async fn open_loop(target: &Arc<Target>, rate: u32, warm_secs: f64, secs: f64) -> Result<OpenLoop> {
    let client = http_client(256)?;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let warm = (warm_secs * f64::from(rate)) as usize;
    let measured = (secs * f64::from(rate)) as usize;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, String>>();
    let tracker = tokio_util::task::TaskTracker::new();
    let sampler = RssSampler::start(target.pid);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut cpu_start = cpu_seconds(target.pid)?;
    let mut started = Instant::now();
    for i in 0..warm + measured {
        ticks.tick().await;
        if i == warm {
            cpu_start = cpu_seconds(target.pid)?;
            started = Instant::now();
        }
        let record = i >= warm;
        // A target that cannot keep up would have this process open a connection per waiting
        // call until it runs out of file descriptors: past a bound, a tick is an error instead.
        if tracker.len() >= MAX_IN_FLIGHT {
            if record {
                let _ = tx.send(Err(format!(
                    "not sent: {MAX_IN_FLIGHT} calls already waiting for an answer"
                )));
            }
            continue;
        }
        let (client, sender, target) = (client.clone(), tx.clone(), target.clone());
        tracker.spawn(async move {
            let t0 = Instant::now();
            let outcome = call(&client, &target).await;
            let sample = outcome.map(|()| t0.elapsed().as_micros().max(1) as u64);
            if sample.is_ok() {
                target.ok.fetch_add(1, Ordering::Relaxed);
            }
            if record {
                let _ = sender.send(sample);
            }
        });
    }
    let offered = measured as f64 / started.elapsed().as_secs_f64();
    tracker.close();
    tracker.wait().await;
    let cpu = cpu_seconds(target.pid)? - cpu_start;
    drop(tx);
    let rss_max_kib = sampler.stop().await;

    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut errors, mut first_error) = (0, None);
    while let Some(sample) = rx.recv().await {
        match sample {
            Ok(us) => {
                latency.record(us)?;
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    Ok(OpenLoop {
        cpu_us_per_request: cpu / measured.max(1) as f64 * 1e6,
        latency,
        errors,
        first_error,
        offered,
        rss_max_kib,
    })
}

/// Closed loop: `workers` callers, each starting its next call when the last one ended, for
/// one second of warm-up and then `secs`.
async fn closed_loop(target: &Arc<Target>, workers: usize, secs: f64) -> Result<ClosedLoop> {
    let client = http_client(workers)?;
    let warm_until = Instant::now() + Duration::from_secs(1);
    let until = warm_until + Duration::from_secs_f64(secs);
    let sampler = RssSampler::start(target.pid);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (client, t) = (client.clone(), target.clone());
        set.spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut errors, mut first_error) = (0_u64, None);
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let outcome = call(&client, &t).await;
                let end = Instant::now();
                if outcome.is_ok() {
                    t.ok.fetch_add(1, Ordering::Relaxed);
                }
                // Only calls that both started and ended inside the measured window count.
                if t0 >= warm_until && end <= until {
                    match outcome {
                        Ok(()) => {
                            let _ = latency.record((end - t0).as_micros().max(1) as u64);
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
            (latency, errors, first_error)
        });
    }
    tokio::time::sleep_until(warm_until.into()).await;
    let cpu_start = cpu_seconds(target.pid)?;
    let own_start = cpu_ticks(std::process::id())?;
    tokio::time::sleep_until(until.into()).await;
    let cpu = cpu_seconds(target.pid)? - cpu_start;
    let own = (cpu_ticks(std::process::id())? - own_start) as f64 / 100.0;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut errors, mut first_error) = (0, None);
    while let Some(joined) = set.join_next().await {
        let (h, e, first) = joined?;
        latency.add(&h)?;
        errors += e;
        if first_error.is_none() {
            first_error = first;
        }
    }
    let rss_max_kib = sampler.stop().await;
    let rps = latency.len() as f64 / secs;
    let n = (latency.len() + errors).max(1) as f64;
    Ok(ClosedLoop {
        rps,
        cpu_us_per_request: cpu / n * 1e6,
        client_cpu_us_per_request: own / n * 1e6,
        latency,
        errors,
        first_error,
        rss_max_kib,
    })
}

/// Reads a target's resident memory every second until stopped; returns the largest reading.
struct RssSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut max = 0;
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                max = max.max(rss_kib(pid).unwrap_or(0));
                tokio::select! {
                    _ = every.tick() => {}
                    _ = &mut stopped => break,
                }
            }
            max.max(rss_kib(pid).unwrap_or(0))
        });
        RssSampler { stop, task }
    }

    async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

// ------------------------------------------------------------------------------------------------
// The processes under test

/// The mock upstream in a child process (this binary with `FLOTILLA_BENCH_GATEWAY_ROLE=mock`).
struct MockProcess {
    base_url: String,
    pid: u32,
    child: std::process::Child,
}

impl MockProcess {
    async fn start() -> Result<MockProcess> {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .env(ROLE_ENV, "mock")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the mock upstream")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout of the mock"))?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        })
        .await??;
        let base_url = line.trim().to_owned();
        if !base_url.starts_with("http://") {
            let _ = child.kill();
            bail!("the mock upstream did not start (it printed `{base_url}`)");
        }
        Ok(MockProcess {
            base_url,
            pid: child.id(),
            child,
        })
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        // Closing its stdin stops it; kill it if it does not go.
        drop(self.child.stdin.take());
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flotilla serve` (the release binary cargo built for this benchmark) in front of the mock.
async fn start_flotilla(mock_base_url: &str) -> Result<(ServerProcess, tempfile::TempDir)> {
    let dir = tempfile::Builder::new()
        .prefix("flotilla-gwbench-")
        .tempdir()?;
    let config = dir.path().join("flotilla.toml");
    std::fs::write(
        &config,
        format!(
            r#"# Every gateway feature on, with limits high enough never to refuse.
[rate_limits]
per_key = "100000/s"
per_tenant = "100000/s"

[gateway]
tenant_requests_per_minute = 10000000
tenant_tokens_per_minute = 10000000000
key_requests_per_minute = 10000000
key_tokens_per_minute = 10000000000
tenant_cost_per_hour = "1000000"

# The classic `hourly_tokens_high` alert (over 1,000,000 tokens an hour) holds the heaviest
# tenant to `rate_limit` while it fires; this load passes that within minutes. The rules stay
# on, the hold is made harmless.
[alerting]
rate_limit = "100000/s"

[providers.mock]
base_url = "{mock_base_url}"

[[models]]
name = "mock"
provider = "mock"
upstream = "ok"
prices = {{ input = 1, output = 2 }}
"#
        ),
    )?;
    let server = ServerProcess::builder(env!("CARGO_BIN_EXE_flotilla"))
        .env(flotilla_testkit::BOOTSTRAP_ADMIN_KEY_ENV, ADMIN_KEY)
        .data_dir(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .start()
        .await
        .map_err(|e| anyhow!("starting flotilla serve: {e}"))?;
    // The directory outlives the server: the ledger is counted after it stopped.
    Ok((server, dir))
}

/// A monthly budget on the default tenant, so every call reserves and settles against it:
/// `PUT /v1/budgets/monthly`, or, on a build without that route, a row written to the store
/// (the gateway reads budgets through a cache of a few seconds).
async fn create_budget(base: &str, db: &Path) -> Result<&'static str> {
    let http = http_client(1)?;
    let response = http
        .put(format!("{base}/v1/budgets/monthly"))
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({"limit": "1000000"}))
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    if status.is_success() {
        return Ok("PUT /v1/budgets/monthly");
    }
    if status != reqwest::StatusCode::NOT_FOUND && status != reqwest::StatusCode::METHOD_NOT_ALLOWED
    {
        bail!("PUT /v1/budgets/monthly answered {status}: {text}");
    }
    let store = flotilla_store::open(&flotilla_core::config::Database::Sqlite(db.to_owned()), 1)
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    let request: flotilla_core::budget::BudgetRequest =
        serde_json::from_value(serde_json::json!({"limit": "1000000"}))?;
    let budget = request
        .into_budget(
            flotilla_core::id::TenantId::DEFAULT,
            flotilla_core::budget::Period::Monthly,
            &[50, 80, 90, 100],
            chrono::Utc::now(),
        )
        .map_err(|e| anyhow!("{e}"))?;
    store.put_budget(&budget).await?;
    if store.list_budgets(None).await?.is_empty() {
        bail!("the budget row is not there");
    }
    // Past the gateway's budget cache.
    tokio::time::sleep(Duration::from_secs(6)).await;
    Ok("a row in the store (this build has no PUT /v1/budgets)")
}

/// LiteLLM's proxy on the same mock, in its own process group (its workers stop with it).
struct LiteLlm {
    base_url: String,
    /// "LiteLLM <version>, <n> worker(s)".
    describe: String,
    pid: u32,
    child: tokio::process::Child,
    _log_dir: tempfile::TempDir,
}

impl LiteLlm {
    async fn start(bin: &Path, mock_base_url: &str, workers: u32) -> Result<LiteLlm> {
        let port = flotilla_testkit::free_port()?;
        let log_dir = tempfile::Builder::new()
            .prefix("flotilla-gwbench-litellm-")
            .tempdir()?;
        let log = log_dir.path().join("litellm.log");
        let config = workspace().join("bench/gateway/litellm.yaml");
        let child = tokio::process::Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--num_workers", &workers.to_string()])
            .env("MOCK_API_BASE", mock_base_url)
            // No fetch of the model price map from the network at start-up.
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_LOG", "ERROR")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(log_dir.path().join("litellm.err"))?)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("LiteLLM exited at once"))?;
        // The version, from the Python next to the executable (a venv's bin/).
        let version = std::process::Command::new(bin.with_file_name("python"))
            .args([
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "(version unknown)".to_owned());
        let mut proxy = LiteLlm {
            base_url: format!("http://127.0.0.1:{port}"),
            describe: format!("LiteLLM {version}, {workers} worker(s)"),
            pid,
            child,
            _log_dir: log_dir,
        };
        // Ready when a real call through it succeeds (start-up takes several seconds).
        let probe = Target {
            name: "LiteLLM proxy",
            url: format!("{}/v1/chat/completions", proxy.base_url),
            authorization: Some(format!("Bearer {LITELLM_KEY}")),
            body: BODY_GATEWAY,
            pid,
            ok: AtomicU64::new(0),
        };
        let http = http_client(1)?;
        let started = Instant::now();
        loop {
            if let Some(status) = proxy.child.try_wait()? {
                let err = std::fs::read_to_string(proxy._log_dir.path().join("litellm.err"))
                    .unwrap_or_default();
                bail!("LiteLLM exited ({status}): {}", tail(&err, 2000));
            }
            match call(&http, &probe).await {
                Ok(()) => break,
                Err(e) if started.elapsed() > Duration::from_secs(120) => {
                    bail!("not ready after 120 s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        eprintln!(
            "LiteLLM proxy at {} (pid {pid}, {workers} worker(s)), ready after {:.1} s",
            proxy.base_url,
            started.elapsed().as_secs_f64()
        );
        Ok(proxy)
    }
}

impl Drop for LiteLlm {
    fn drop(&mut self) {
        // The whole group: uvicorn's workers too.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.start_kill();
    }
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}

// ------------------------------------------------------------------------------------------------
// Metrics and ledger

/// `GET /metrics` every 10 s until told to stop; returns how many scrapes succeeded.
async fn scrape_metrics(base: String, running: Arc<AtomicBool>) -> u64 {
    let Ok(http) = http_client(1) else { return 0 };
    let mut n = 0;
    let mut every = tokio::time::interval(Duration::from_secs(10));
    while running.load(Ordering::Relaxed) {
        every.tick().await;
        if let Ok(r) = http
            .get(format!("{base}/metrics"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            && r.status().is_success()
            && r.bytes().await.is_ok()
        {
            n += 1;
        }
    }
    n
}

/// The sum of `flotilla_gateway_requests_total{status="ok"}`.
async fn gateway_ok_count(base: &str) -> Result<u64> {
    let text = http_client(1)?
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("flotilla_gateway_requests_total{") && l.contains("status=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Rows of the usage ledger in the stopped server's SQLite file.
async fn usage_rows(db: &Path) -> Result<u64> {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM usage WHERE status = 'ok'")
        .fetch_one(&mut conn)
        .await?;
    Ok(n as u64)
}

// ------------------------------------------------------------------------------------------------
// /proc

/// A `kB` line of `/proc/<pid>/status`, e.g. `VmRSS:`.
fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (Linux only)"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// Resident memory of a process and its descendants (LiteLLM's workers), in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let mut total = proc_status_kib(pid, "VmRSS:")?;
    for child in descendants(pid) {
        total += proc_status_kib(child, "VmRSS:").unwrap_or(0);
    }
    Ok(total)
}

/// User plus system CPU time of a process and its descendants, in seconds (100 ticks a second).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let mut total = cpu_ticks(pid)?;
    for child in descendants(pid) {
        total += cpu_ticks(child).unwrap_or(0);
    }
    Ok(total as f64 / 100.0)
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let fields = stat_fields(pid)?;
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))
    };
    Ok(ticks(11)? + ticks(12)?)
}

/// The fields of `/proc/<pid>/stat` after the command name (state is 0, ppid 1).
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (Linux only)"))?;
    Ok(stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default())
}

/// Every process below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let ppid = stat_fields(p).ok()?.get(1)?.parse::<u32>().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, _) in parents.iter().filter(|(_, pp)| *pp == parent) {
            found.push(*p);
            frontier.push(*p);
        }
    }
    found
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn mem_total_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0)
}

// ------------------------------------------------------------------------------------------------
// The report

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn describe(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.2} ms (n={})",
        ms(h, 0.5),
        ms(h, 0.99),
        ms(h, 0.999),
        h.max() as f64 / 1000.0,
        h.len()
    )
}

#[allow(clippy::too_many_arguments)]
fn report(
    settings: &Settings,
    started_at: &chrono::DateTime<chrono::Utc>,
    targets: &[Arc<Target>],
    open: &[OpenLoop],
    closed: &[ClosedLoop],
    memory: Memory,
    soak: &[SoakSample],
    slow: &[(&str, u32, OpenLoop, OpenLoop)],
    checks: Checks,
    litellm_note: &str,
) -> usize {
    let cpus = cpus();
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "\n### Model gateway benchmark, {} ({cpus} CPUs, {:.1} GiB RAM, load average {} at the end)\n",
        started_at.format("%Y-%m-%d %H:%M UTC"),
        mem_total_gib(),
        load_average()
    ));
    line(format!("{litellm_note}\n"));
    line(format!(
        "Open loop at {}/s for {} s (+{} s warm-up), keep-alive connections; added = target − direct at the same percentile.\n",
        settings.rate, settings.secs, settings.warm_secs
    ));
    line("| target | p50 | p99 | p99.9 | max | errors | added p50 | added p99 | added p99.9 | server CPU / request | server RSS (max) |".to_owned());
    line("| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |".to_owned());
    let direct = &open[0].latency;
    for (t, r) in targets.iter().zip(open) {
        let h = &r.latency;
        let added = |q: f64| {
            if std::ptr::eq(h, direct) {
                "—".to_owned()
            } else {
                format!("{:+.3} ms", ms(h, q) - ms(direct, q))
            }
        };
        line(format!(
            "| {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.2} ms | {} | {} | {} | {} | {:.0} µs | {:.1} MiB |",
            t.name,
            ms(h, 0.5),
            ms(h, 0.99),
            ms(h, 0.999),
            h.max() as f64 / 1000.0,
            r.errors,
            added(0.5),
            added(0.99),
            added(0.999),
            r.cpu_us_per_request,
            mib(r.rss_max_kib)
        ));
    }
    line(String::new());
    line(format!(
        "Closed loop, {} workers for {} s (+1 s warm-up):\n",
        settings.workers, settings.throughput_secs
    ));
    line("| target | requests/s | p50 | p99 | errors | server CPU / request | client CPU / request | server RSS (max) |".to_owned());
    line("| --- | --: | --: | --: | --: | --: | --: | --: |".to_owned());
    for (t, r) in targets.iter().zip(closed) {
        line(format!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.0} µs | {:.0} µs | {:.1} MiB |",
            t.name,
            r.rps,
            ms(&r.latency, 0.5),
            ms(&r.latency, 0.99),
            r.errors,
            r.cpu_us_per_request,
            r.client_cpu_us_per_request,
            mib(r.rss_max_kib)
        ));
    }
    line(String::new());
    for (name, rate, base, r) in slow {
        line(format!(
            "{name} cannot take {}/s; open loop at {rate}/s (half its throughput), direct then {name}:\n",
            settings.rate
        ));
        line(
            "| target | p50 | p99 | p99.9 | max | errors | added p50 | added p99 | added p99.9 |"
                .to_owned(),
        );
        line("| --- | --: | --: | --: | --: | --: | --: | --: | --: |".to_owned());
        for (label, x) in [("direct (mock)", base), (*name, r)] {
            let h = &x.latency;
            let added = |q: f64| {
                if std::ptr::eq(x, base) {
                    "—".to_owned()
                } else {
                    format!("{:+.3} ms", ms(h, q) - ms(&base.latency, q))
                }
            };
            line(format!(
                "| {label} | {:.3} ms | {:.3} ms | {:.3} ms | {:.2} ms | {} | {} | {} | {} |",
                ms(h, 0.5),
                ms(h, 0.99),
                ms(h, 0.999),
                h.max() as f64 / 1000.0,
                x.errors,
                added(0.5),
                added(0.99),
                added(0.999)
            ));
        }
        line(String::new());
    }
    for (t, r) in targets.iter().zip(open.iter().zip(closed)) {
        let first = r.0.first_error.as_ref().or(r.1.first_error.as_ref());
        if let Some(e) = first {
            line(format!("First error of {}: {e}\n", t.name));
        }
    }
    line(format!(
        "Flotilla VmRSS: idle {:.1} MiB; max {:.1} MiB at {}/s, {:.1} MiB after it; max {:.1} MiB at full throughput; {:.1} MiB 2 s after the load; VmHWM {:.1} MiB.\n",
        mib(memory.idle),
        mib(open[1].rss_max_kib),
        settings.rate,
        mib(memory.after_open),
        mib(closed[1].rss_max_kib),
        mib(memory.after),
        mib(memory.hwm)
    ));
    if !soak.is_empty() {
        line(format!(
            "Soak: Flotilla at {}/s, one sample per window:\n",
            settings.soak_rate
        ));
        line("| time | VmRSS | p50 | p99 | p99.9 | errors |".to_owned());
        line("| --: | --: | --: | --: | --: | --: |".to_owned());
        for s in soak {
            line(format!(
                "| {:.0} s | {:.1} MiB | {:.3} ms | {:.3} ms | {:.3} ms | {} |",
                s.at_s,
                mib(s.rss_kib),
                ms(&s.latency, 0.5),
                ms(&s.latency, 0.99),
                ms(&s.latency, 0.999),
                s.errors
            ));
        }
        line(String::new());
    }
    line(format!(
        "Checks: {} successful calls through Flotilla; metrics count {} (`flotilla_gateway_requests_total{{status=\"ok\"}}`); ledger rows with status ok after shutdown: {}; /metrics scraped {} times during the run.\n",
        checks.flotilla_ok, checks.metrics_ok, checks.ledger_rows, checks.scrapes
    ));

    // Floors.
    let added99 = ms(&open[1].latency, 0.99) - ms(direct, 0.99);
    let rss_max = [
        open[1].rss_max_kib,
        closed[1].rss_max_kib,
        soak.iter().map(|s| s.rss_kib).max().unwrap_or(0),
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    let soak_drift = match (soak.get(1), soak.last()) {
        (Some(first), Some(last)) if soak.len() > 2 => Some(mib(last.rss_kib) - mib(first.rss_kib)),
        _ => None,
    };
    let floors = [
        (
            format!("added p99 at {}/s", settings.rate),
            format!("{added99:.3} ms"),
            format!("≤ {FLOOR_ADDED_P99_MS} ms"),
            added99 <= FLOOR_ADDED_P99_MS,
        ),
        (
            "sustained throughput".to_owned(),
            format!("{:.0} requests/s", closed[1].rps),
            format!("≥ {FLOOR_THROUGHPUT:.0}"),
            closed[1].rps >= FLOOR_THROUGHPUT,
        ),
        (
            "RSS under load".to_owned(),
            format!("{:.1} MiB", mib(rss_max)),
            format!("≤ {FLOOR_RSS_MIB} MiB"),
            mib(rss_max) <= FLOOR_RSS_MIB,
        ),
        (
            "errors".to_owned(),
            (open[1].errors + closed[1].errors).to_string(),
            "0".to_owned(),
            open[1].errors + closed[1].errors == 0,
        ),
        (
            "every call in the metrics and the ledger".to_owned(),
            format!(
                "{} calls, {} counted, {} ledger rows",
                checks.flotilla_ok, checks.metrics_ok, checks.ledger_rows
            ),
            "equal".to_owned(),
            checks.flotilla_ok == checks.metrics_ok && checks.flotilla_ok == checks.ledger_rows,
        ),
    ];
    line("| floor | measured | target | verdict |".to_owned());
    line("| --- | --: | --- | --- |".to_owned());
    let mut missed = 0;
    for (what, value, floor, ok) in &floors {
        if !ok {
            missed += 1;
        }
        line(format!(
            "| {what} | {value} | {floor} | {} |",
            if *ok { "ok" } else { "MISSED" }
        ));
    }
    if let Some(drift) = soak_drift {
        line(format!(
            "| RSS flat over the soak (last − second sample) | {drift:+.1} MiB | — | {} |",
            if drift.abs() <= 5.0 { "flat" } else { "GROWS" }
        ));
    }
    println!("{out}");
    missed
}
