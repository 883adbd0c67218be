//! The soak (issue 16, item 4; docs/reliability.md): the real binary on SQLite with agent
//! processes under a steady load of tasks and model-gateway calls, sampled every minute — RSS,
//! open file descriptors, the database's size on disk, and the p99 of submit-to-terminal and of
//! gateway calls in that minute. It fails when RSS or file descriptors keep growing.
//!
//! Not part of `.ci/run` (it runs for an hour by default):
//! `FLOTILLA_SOAK_MINUTES=60 cargo nextest run -p flotilla --test soak --run-ignored only
//! --no-capture`; `FLOTILLA_SOAK_TASKS` and `FLOTILLA_SOAK_CALLS` set the rates per second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN, code_generator_server, wait_for_agents};
use flotilla_core::task::TaskStatus;
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::AgentProcess;
use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One minute's sample.
#[derive(Debug)]
struct Sample {
    minute: u64,
    rss_kib: u64,
    fds: usize,
    db_bytes: u64,
    tasks: u64,
    task_p99_ms: f64,
    calls: u64,
    call_p99_ms: f64,
    errors: u64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Bytes of the SQLite database and its WAL in `dir`.
fn db_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("flotilla.db"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Latencies of one minute, in microseconds.
#[derive(Default)]
struct Window {
    tasks: Option<Histogram<u64>>,
    calls: Option<Histogram<u64>>,
    errors: u64,
}

fn record(h: &mut Option<Histogram<u64>>, took: Duration) {
    let h = h.get_or_insert_with(|| Histogram::new(3).unwrap());
    let _ = h.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
}

fn p99_ms(h: Option<&Histogram<u64>>) -> (u64, f64) {
    h.map_or((0, 0.0), |h| {
        (h.len(), h.value_at_quantile(0.99) as f64 / 1000.0)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an hour by default: run it with --run-ignored only (docs/reliability.md)"]
async fn an_hour_under_steady_load_stays_flat() {
    let minutes = var("FLOTILLA_SOAK_MINUTES", 60).max(3);
    let task_rate = var("FLOTILLA_SOAK_TASKS", 100);
    let call_rate = var("FLOTILLA_SOAK_CALLS", 50);
    let mut server = code_generator_server()
        .env("FLOTILLA_RATE_LIMITS__PER_KEY", "off")
        .env("FLOTILLA_RATE_LIMITS__PER_TENANT", "off")
        // The classic token alert would rate-limit the load it measures.
        .env("FLOTILLA_ALERTING__DEFAULT_RULES", "false")
        .start()
        .await
        .expect("server starts");
    let pid = server.pid().unwrap();
    let data = server.data_dir().to_path_buf();
    let mut agents = Vec::new();
    for _ in 0..4 {
        agents.push(
            AgentProcess::builder(BIN, "code_generator", server.base_url(), ADMIN_KEY)
                .args(["--capacity", "32", "--median-ms", "20", "--p99-ms", "80"])
                .args(["--failure-rate", "0"])
                .start()
                .await
                .expect("agent starts"),
        );
    }
    let client = server.client().unwrap();
    wait_for_agents(&client, 4, Duration::from_secs(20)).await;

    let window = Arc::new(Mutex::new(Window::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    // Tasks: submit, then long-poll to the end; timed as a client sees it.
    {
        let (client, window, stop) = (client.clone(), window.clone(), stop.clone());
        load.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / task_rate as u32);
            while !stop.is_cancelled() {
                tick.tick().await;
                let (client, window) = (client.clone(), window.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let task = SubmitTask::new("code_generator", serde_json::json!({"soak": true}));
                    let ok = match client.submit_task(&task).await {
                        Ok(t) => client
                            .get_task(t.id, Some(Duration::from_secs(30)))
                            .await
                            .is_ok_and(|t| t.status == TaskStatus::Succeeded),
                        Err(_) => false,
                    };
                    let mut w = window.lock().unwrap();
                    if ok {
                        record(&mut w.tasks, started.elapsed());
                    } else {
                        w.errors += 1;
                    }
                });
            }
        });
    }
    // Model calls through the gateway (the simulated provider), metered into the ledger.
    {
        let (url, window, stop) = (
            format!("{}/v1/chat/completions", server.base_url()),
            window.clone(),
            stop.clone(),
        );
        let http = reqwest::Client::new();
        load.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / call_rate as u32);
            while !stop.is_cancelled() {
                tick.tick().await;
                let (http, url, window) = (http.clone(), url.clone(), window.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let body = serde_json::json!({"model": "gemini-2.0-flash", "max_tokens": 32,
                        "messages": [{"role": "user", "content": "soak"}]});
                    let ok = http
                        .post(url)
                        .bearer_auth(ADMIN_KEY)
                        .json(&body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    let mut w = window.lock().unwrap();
                    if ok {
                        record(&mut w.calls, started.elapsed());
                    } else {
                        w.errors += 1;
                    }
                });
            }
        });
    }

    let mut samples = Vec::new();
    for minute in 1..=minutes {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let w = std::mem::take(&mut *window.lock().unwrap());
        let (tasks, task_p99_ms) = p99_ms(w.tasks.as_ref());
        let (calls, call_p99_ms) = p99_ms(w.calls.as_ref());
        let sample = Sample {
            minute,
            rss_kib: rss_kib(pid),
            fds: fds(pid),
            db_bytes: db_bytes(&data),
            tasks,
            task_p99_ms,
            calls,
            call_p99_ms,
            errors: w.errors,
        };
        eprintln!(
            "soak | minute {:>3} | RSS {:>7.1} MiB | fds {:>4} | database {:>7.1} MiB | tasks {:>6} p99 {:>7.2} ms | calls {:>5} p99 {:>6.2} ms | errors {}",
            sample.minute,
            sample.rss_kib as f64 / 1024.0,
            sample.fds,
            sample.db_bytes as f64 / 1_048_576.0,
            sample.tasks,
            sample.task_p99_ms,
            sample.calls,
            sample.call_p99_ms,
            sample.errors
        );
        samples.push(sample);
    }
    stop.cancel();
    while load.join_next().await.is_some() {}

    // Flat: after the first two minutes of warm-up, RSS grows by less than half and 32 MiB, file
    // descriptors by fewer than 50; every minute served its load.
    let (warm, last) = (&samples[1], samples.last().unwrap());
    assert!(
        last.rss_kib < warm.rss_kib * 3 / 2 + 32 * 1024,
        "RSS grew from {} to {} KiB",
        warm.rss_kib,
        last.rss_kib
    );
    assert!(
        last.fds < warm.fds + 50,
        "fds grew from {} to {}",
        warm.fds,
        last.fds
    );
    assert!(samples.iter().all(|s| s.tasks > 0 && s.calls > 0));
    for agent in &mut agents {
        agent.terminate().await.ok();
    }
    server.terminate().await.ok();
}
