//! What authentication, authorisation and rate limiting cost per request: the exact code the
//! API runs before a handler (`auth::Access::authenticate`: source throttle, key verification against the
//! cache, key and tenant GCRA limits) plus the handler's permission check, timed per call on a
//! real control plane (SQLite in a temporary directory). Run with
//! `cargo bench -p flotilla-server --bench auth`; figures go to docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flotilla_core::auth::{Permission, Role};
use flotilla_core::config;
use flotilla_core::id::TenantId;
use flotilla_server::auth::bootstrap::new_key;
use flotilla_server::{StartOptions, start};
use hdrhistogram::Histogram;
use std::net::IpAddr;
use std::time::Instant;

const CALLS: usize = 200_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    // Limits high enough never to refuse, so every call does the full GCRA bookkeeping.
    let config = config::load(
        None,
        &[],
        &[
            ("server.listen".into(), "127.0.0.1:0".into()),
            (
                "server.data_dir".into(),
                dir.path().to_str().unwrap().into(),
            ),
            ("rate_limits.per_key".into(), "1000000000/s".into()),
            ("rate_limits.per_tenant".into(), "1000000000/s".into()),
        ],
    )
    .unwrap();
    let store = flotilla_store::open(&config.database, 4).await.unwrap();
    let server = start(config, store.clone(), StartOptions::default())
        .await
        .unwrap();
    let state = server.state().clone();
    let access = state.access.clone();
    let (key, record) = new_key(
        TenantId::DEFAULT,
        Role::Submitter,
        "bench",
        chrono::Utc::now(),
    );
    store.insert_api_key(&record).await.unwrap();
    let header = format!("Bearer {key}");
    let source = Some(IpAddr::from([127, 0, 0, 1]));

    let mut full = Histogram::<u64>::new(3).unwrap();
    let mut verify_only = Histogram::<u64>::new(3).unwrap();
    // Warm the key cache and the limiter tables.
    for _ in 0..1000 {
        access
            .authenticate(source, &header, "/v1/tasks")
            .await
            .unwrap();
    }
    let started = Instant::now();
    for i in 0..2 * CALLS {
        // Interleaved, so both see the same machine load.
        if i % 2 == 0 {
            let t = Instant::now();
            let caller = access
                .authenticate(source, &header, "/v1/tasks")
                .await
                .unwrap();
            caller
                .require(Permission::SubmitTasks, "submit tasks")
                .unwrap();
            full.record(t.elapsed().as_nanos() as u64).unwrap();
        } else {
            let t = Instant::now();
            let (caller, _) = access.verify(&key, state.clock.now()).await.unwrap();
            caller
                .require(Permission::SubmitTasks, "submit tasks")
                .unwrap();
            verify_only.record(t.elapsed().as_nanos() as u64).unwrap();
        }
    }
    let elapsed = started.elapsed();
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!("auth bench: {CALLS} calls each, interleaved, {elapsed:.2?} in all");
    println!("                                   p50 µs   p99 µs  p99.9 µs   max µs");
    for (name, h) in [
        ("authenticate + limits + permission", &full),
        ("key verification + permission", &verify_only),
    ] {
        println!(
            "{name:<35}{:>7.2}{:>9.2}{:>10.2}{:>9.1}",
            us(h, 0.5),
            us(h, 0.99),
            us(h, 0.999),
            h.max() as f64 / 1000.0
        );
    }
    println!(
        "rate limiting and source throttling add {:.2} µs at p50 ({:.2}× verification alone)",
        us(&full, 0.5) - us(&verify_only, 0.5),
        us(&full, 0.5) / us(&verify_only, 0.5)
    );
    server.stop().await;
}
