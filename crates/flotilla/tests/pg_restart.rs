//! PostgreSQL restarted under load (docs/design.md §4, §9): three control planes share a database of
//! the test's own, agents run tasks from a steady stream of submissions, and the database stops
//! at once (`pg_ctl stop -m immediate`, as in a crash) and comes back on the same port.
//!
//! While it is away every replica must say it is not ready (`/ready` non-200) yet alive
//! (`/health` 200), and answer submissions with a JSON 5xx error within a bounded time rather
//! than hang. Once it is back every replica must be ready again, accept work again, and every
//! task answered `202` — before, during or after — must succeed, no attempt number may repeat,
//! no attempt may run twice on the agents, and there must be exactly one leader.
//!
//! The shared PostgreSQL on 127.0.0.1:5432 serves every other test at the same time, which is
//! why this one starts a server of its own ([`common::PrivatePostgres`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    ADMIN_KEY, BIN, PrivatePostgres, StopMode, assert_each_attempt_ran_once, one_leader,
    start_replica, wait_for_agents, wait_terminal,
};
use flotilla_client::{Client, ClientError};
use flotilla_core::task::{Task, TaskStatus};
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::AgentProcess;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Leader lease of the test: a leader that cannot reach the database steps down within 1.5 s.
const LEASE_MS: u64 = 1500;
/// How long the database stays away: longer than the leader lease, the task leases, and twice
/// the store's wait for a connection (so that submissions are refused, not only delayed).
const OUTAGE: Duration = Duration::from_secs(12);
/// A submission is started this often (each in its own task, so one slow answer does not hold
/// back the stream).
const SUBMIT_EVERY: Duration = Duration::from_millis(40);
/// Longest a submission may take to be answered while the database is away: the store gives
/// up on a connection after 5 s, and a submission that arrives while the group-commit writer
/// waits on the batch before its own waits for both.
const ANSWER_WITHIN: Duration = Duration::from_secs(12);
/// How soon after the database stopped every replica must say it is not ready.
const NOT_READY_WITHIN: Duration = Duration::from_secs(5);
/// Longest one `/ready` may take to answer, 200 or 503 (the Helm chart's probe gives it 3 s).
const PROBE_WITHIN: Duration = Duration::from_secs(3);
/// How soon after the database is back every replica must be ready again.
const READY_AGAIN_WITHIN: Duration = Duration::from_secs(20);

/// One submission of the stream: when it started, how long it took, what came back.
struct Submission {
    started: Instant,
    took: Duration,
    outcome: Result<Task, ClientError>,
}

/// Submits a task every [`SUBMIT_EVERY`] round-robin to `clients` until `stop`; every
/// submission is recorded, answered or not.
async fn stream(clients: Vec<Client>, log: Arc<Mutex<Vec<Submission>>>, stop: CancellationToken) {
    let mut pending = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(SUBMIT_EVERY);
    for i in 0.. {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let client = clients[i % clients.len()].clone();
        let log = log.clone();
        pending.spawn(async move {
            let started = Instant::now();
            let outcome = client
                .submit_task(&SubmitTask::new(
                    "code_generator",
                    serde_json::json!({ "n": i }),
                ))
                .await;
            log.lock().unwrap().push(Submission {
                started,
                took: started.elapsed(),
                outcome,
            });
        });
    }
    while pending.join_next().await.is_some() {}
}

/// Every replica's `/ready` at once: `Ok(())` for a 200, else what it said; each must answer
/// within [`PROBE_WITHIN`], database or not.
async fn readiness(clients: &[Client]) -> Vec<Result<(), String>> {
    let probes = clients.iter().enumerate().map(|(i, client)| async move {
        let started = Instant::now();
        let answer = client.ready().await;
        let took = started.elapsed();
        assert!(
            took <= PROBE_WITHIN,
            "replica {i} answered /ready after {took:?}: {answer:?}"
        );
        match answer {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(503) => {
                // `/ready` is open to anyone: it names what is wrong, not the driver's words.
                let said = e.to_string();
                assert!(
                    [
                        "the store is unreachable",
                        "the store did not answer within",
                        "shutting down",
                        "migrations are not applied",
                    ]
                    .iter()
                    .any(|reason| said.contains(reason)),
                    "replica {i}: /ready said {said}"
                );
                Err(said)
            }
            Err(e) => panic!("replica {i}: /ready failed otherwise than with 503: {e}"),
        }
    });
    futures::future::join_all(probes).await
}

/// Waits until every replica's `/ready` says `want` (200 or not), or fails after `within`
/// counted from `since`; returns how long it took.
async fn every_replica_ready(
    clients: &[Client],
    want: bool,
    since: Instant,
    within: Duration,
    what: &str,
) -> Duration {
    loop {
        let answers = readiness(clients).await;
        let took = since.elapsed();
        if answers.iter().all(|a| a.is_ok() == want) {
            assert!(took <= within, "{what} took {took:?}: {answers:?}");
            return took;
        }
        assert!(took < within, "{what} within {within:?}: {answers:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_ride_out_a_postgres_restart_under_load() {
    let mut pg = PrivatePostgres::start();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(start_replica(&pg.url, LEASE_MS).await);
    }
    // One agent per replica, registered with it; every replica dispatches to all three.
    let mut agents = Vec::new();
    for replica in &replicas {
        let agent = AgentProcess::builder(BIN, "code_generator", replica.base_url(), ADMIN_KEY)
            .env("RUST_LOG", "info,flotilla_agent=debug")
            .args([
                "--capacity",
                "16",
                "--median-ms",
                "40",
                "--p99-ms",
                "120",
                "--failure-rate",
                "0",
            ])
            .start()
            .await
            .expect("agent starts");
        agents.push(agent);
    }
    // Probes and reads get a short limit, so that a replica that hangs fails the test rather
    // than stalls it; submissions get a long one, so that a hang is measured, not cut short.
    let probes: Vec<Client> = replicas
        .iter()
        .map(|r| {
            r.client()
                .unwrap()
                .with_request_timeout(Duration::from_secs(10))
        })
        .collect();
    let submitters: Vec<Client> = replicas
        .iter()
        .map(|r| {
            r.client()
                .unwrap()
                .with_request_timeout(Duration::from_secs(60))
        })
        .collect();
    for client in &probes {
        wait_for_agents(client, 3, Duration::from_secs(20)).await;
    }
    let live: Vec<Option<Client>> = probes.iter().cloned().map(Some).collect();
    let (_, first_generation) = one_leader(&live, Duration::from_secs(10)).await;

    // A steady stream of submissions, through the whole outage.
    let log = Arc::new(Mutex::new(Vec::new()));
    let stop_stream = CancellationToken::new();
    let streaming = tokio::spawn(stream(submitters, log.clone(), stop_stream.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The database goes away as in a crash.
    let stopped_at = Instant::now();
    pg.stop(StopMode::Immediate);
    let not_ready_after = every_replica_ready(
        &probes,
        false,
        stopped_at,
        NOT_READY_WITHIN,
        "every replica says it is not ready once the database has stopped",
    )
    .await;
    // Not ready, but alive, all the while.
    while stopped_at.elapsed() < OUTAGE {
        for (i, client) in probes.iter().enumerate() {
            let health = client.health().await;
            assert!(
                health.is_ok(),
                "replica {i} must stay alive without its database: {health:?}"
            );
        }
        let answers = readiness(&probes).await;
        assert!(
            answers.iter().all(Result::is_err),
            "ready without a database: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // And comes back on the same port.
    let restarted_at = Instant::now();
    pg.start_again();
    let ready_after = every_replica_ready(
        &probes,
        true,
        restarted_at,
        READY_AGAIN_WITHIN,
        "every replica is ready again once the database is back",
    )
    .await;
    // Keep submitting for a while on the recovered database.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop_stream.cancel();
    streaming.await.unwrap();
    let log = std::mem::take(&mut *log.lock().unwrap());

    // What the submissions got, by when they were sent.
    let mut accepted = Vec::new();
    let (mut before, mut during, mut after, mut refused) = (0, 0, 0, 0);
    let mut slowest_refusal = Duration::ZERO;
    for s in log {
        let phase = if s.started < stopped_at {
            &mut before
        } else if s.started < restarted_at {
            &mut during
        } else {
            &mut after
        };
        match s.outcome {
            Ok(task) => {
                *phase += 1;
                accepted.push(task);
            }
            Err(e) => {
                // Refused: a clear JSON 5xx error, in a bounded time; never a dropped connection
                // (which a panicking handler would give) nor a hang.
                let (status, code) = (e.status(), e.code().map(str::to_owned));
                assert!(
                    matches!(status, Some(500..=599)) && code.is_some(),
                    "a submission failed without a JSON 5xx error: {e}"
                );
                assert!(
                    s.took <= ANSWER_WITHIN,
                    "a submission was refused only after {:?}: {e}",
                    s.took
                );
                assert!(
                    s.started + s.took >= stopped_at,
                    "a submission was refused before the database stopped: {e}"
                );
                slowest_refusal = slowest_refusal.max(s.took);
                refused += 1;
            }
        }
    }
    eprintln!(
        "not ready {not_ready_after:?} after the stop, ready {ready_after:?} after the start; \
         accepted {before} before, {during} during, {after} after; refused {refused} \
         (slowest answer {slowest_refusal:?})"
    );
    assert!(
        before > 20,
        "only {before} tasks accepted before the outage"
    );
    assert!(after > 20, "only {after} tasks accepted after the outage");
    assert!(
        refused > 0,
        "no submission was refused while the database was away"
    );

    // Every accepted task succeeds, and no attempt number repeats.
    let client = &probes[0];
    for task in &accepted {
        let done = wait_terminal(client, task.id, Duration::from_secs(30)).await;
        assert_eq!(
            done.status,
            TaskStatus::Succeeded,
            "task {} ended {:?}: {:?}\n{}",
            task.id,
            done.status,
            done.error,
            replicas[0].logs()
        );
        let numbers: Vec<i32> = done.attempts.iter().map(|a| a.number).collect();
        let mut unique = numbers.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            numbers.len(),
            unique.len(),
            "attempt numbers of {} repeat: {numbers:?}",
            task.id
        );
    }
    // No attempt ran twice on the agents.
    assert_each_attempt_ran_once(&agents, accepted.len());
    // Exactly one leader again, in a term that follows the first.
    let (_, generation) = one_leader(&live, Duration::from_secs(10)).await;
    assert!(
        generation >= first_generation,
        "the leader's term went back: {generation:?} after {first_generation:?}"
    );

    for agent in &mut agents {
        agent.terminate().await.ok();
    }
    for replica in &mut replicas {
        replica.terminate().await.ok();
    }
    pg.stop(StopMode::Fast);
}
