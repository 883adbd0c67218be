//! Several control planes on one PostgreSQL database (docs/design.md §9), as real processes: three
//! replicas share the queue and the fleet, one of them leads; SIGKILL the leader, then the next
//! one, under a steady load. Every accepted task must end, no attempt may run twice, another
//! replica must take over within the lease, and every change of leader must be an event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    ADMIN_KEY, BIN, PgDatabase, assert_each_attempt_ran_once, one_leader, start_replica,
    wait_for_agents, wait_terminal,
};
use flotilla_client::Client;
use flotilla_core::task::{Task, TaskStatus};
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::{AgentProcess, ServerProcess};
use std::time::{Duration, Instant};

/// Leader lease of the test: a dead leader is replaced within 1.5 s + 0.5 s.
const LEASE_MS: u64 = 1500;

/// Which replica leads, by index, and its generation, as the live replicas themselves say.
async fn leader(replicas: &[Option<ServerProcess>], within: Duration) -> (usize, i64) {
    let clients: Vec<Option<Client>> = replicas
        .iter()
        .map(|r| r.as_ref().map(|r| r.client().unwrap()))
        .collect();
    one_leader(&clients, within).await
}

/// Submits `n` tasks round-robin to the live replicas; returns the accepted ones.
async fn submit(replicas: &[Option<ServerProcess>], from: usize, n: usize) -> Vec<Task> {
    let clients: Vec<Client> = replicas
        .iter()
        .flatten()
        .map(|r| r.client().unwrap())
        .collect();
    let submissions = (from..from + n).map(|i| {
        let client = clients[i % clients.len()].clone();
        async move {
            client
                .submit_task(&SubmitTask::new(
                    "code_generator",
                    serde_json::json!({ "n": i }),
                ))
                .await
        }
    });
    futures::future::join_all(submissions)
        .await
        .into_iter()
        .map(|r| r.expect("a live replica accepts the task"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survive_losing_their_leader_twice() {
    let db = PgDatabase::create();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Some(start_replica(&db.url, LEASE_MS).await));
    }
    // One agent per replica: each registers with and heartbeats to its own replica, and every
    // replica dispatches to all three (the fleet is shared through the store).
    let mut agents = Vec::new();
    for replica in replicas.iter().flatten() {
        let agent = AgentProcess::builder(BIN, "code_generator", replica.base_url(), ADMIN_KEY)
            .env("RUST_LOG", "info,flotilla_agent=debug")
            .args([
                "--capacity",
                "16",
                "--median-ms",
                "60",
                "--p99-ms",
                "150",
                "--failure-rate",
                "0",
            ])
            .start()
            .await
            .expect("agent starts");
        agents.push(agent);
    }
    let observer = replicas[2].as_ref().unwrap().client().unwrap();
    wait_for_agents(&observer, 3, Duration::from_secs(20)).await;

    let (first, first_generation) = leader(&replicas, Duration::from_secs(10)).await;
    let mut accepted = submit(&replicas, 0, 150).await;

    // Kill the leader while its tasks are in flight.
    replicas[first].as_mut().unwrap().kill_hard().await.unwrap();
    let killed_at = Instant::now();
    replicas[first] = None;
    accepted.extend(submit(&replicas, 150, 100).await);
    let (second, second_generation) = leader(&replicas, Duration::from_secs(10)).await;
    let takeover = killed_at.elapsed();
    eprintln!("replica {second} took over {takeover:?} after the leader was killed");
    assert_ne!(second, first);
    assert!(second_generation > first_generation, "a new term");
    assert!(
        // The lease runs out, a replica claims within a third of it; the rest is slack for a
        // loaded machine (every test shares two cores in CI).
        takeover <= Duration::from_millis(LEASE_MS * 4 / 3) + Duration::from_secs(3),
        "took over after {takeover:?}"
    );

    // And the next leader.
    replicas[second]
        .as_mut()
        .unwrap()
        .kill_hard()
        .await
        .unwrap();
    replicas[second] = None;
    accepted.extend(submit(&replicas, 250, 100).await);
    let (last, third_generation) = leader(&replicas, Duration::from_secs(10)).await;
    assert!(third_generation > second_generation);
    let survivor = replicas[last].as_ref().unwrap();
    let client = survivor.client().unwrap();

    // Every accepted task ends, and succeeds: the survivor re-queues what the dead ones held.
    let mut lost_attempts = 0;
    for task in &accepted {
        let done = wait_terminal(&client, task.id, Duration::from_secs(60)).await;
        assert_eq!(
            done.status,
            TaskStatus::Succeeded,
            "task {} ended {:?}: {:?}\n{}",
            task.id,
            done.status,
            done.error,
            survivor.logs()
        );
        let numbers: Vec<i32> = done.attempts.iter().map(|a| a.number).collect();
        let mut unique = numbers.clone();
        unique.dedup();
        assert_eq!(numbers, unique, "attempt numbers of {} repeat", task.id);
        lost_attempts += done.attempts.iter().filter(|a| a.outcome == "lost").count();
    }
    assert!(
        lost_attempts > 0,
        "the leaders died with attempts in flight, which a survivor must have re-queued"
    );
    // No attempt ran twice on the agents.
    assert_each_attempt_ran_once(&agents, accepted.len());

    // The changes of leader are events.
    let events = client
        .list_events(&[("kind", "leader".to_owned())])
        .await
        .unwrap();
    let leads = events
        .events
        .iter()
        .filter(|e| e.message.contains(" leads (generation "))
        .count();
    assert!(
        leads >= 3,
        "three terms, three `leads` events: {:?}",
        events.events
    );

    for agent in &mut agents {
        agent.terminate().await.ok();
    }
    for replica in replicas.iter_mut().flatten() {
        replica.terminate().await.ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_revocations_and_answer_each_others_long_polls() {
    let db = PgDatabase::create();
    let a = start_replica(&db.url, LEASE_MS).await;
    let b = start_replica(&db.url, LEASE_MS).await;
    let (admin_a, admin_b) = (a.client().unwrap(), b.client().unwrap());

    // A key used on B (so B caches it), revoked on A: B refuses it long before its cache
    // would have expired (10 s).
    let key = admin_a
        .create_key(
            &flotilla_core::auth::NewKeyRequest {
                name: "short-lived".to_owned(),
                role: flotilla_core::auth::Role::Submitter,
                expires_at: None,
                rate_limit: None,
            },
            None,
        )
        .await
        .unwrap();
    let on_b = Client::new(&b.base_url(), Some(key.key.clone())).unwrap();
    on_b.list_tasks(&flotilla_client::ListTasks::default())
        .await
        .expect("the new key works on B");
    admin_a.revoke_key(&key.record.id, None).await.unwrap();
    let revoked = Instant::now();
    while on_b
        .list_tasks(&flotilla_client::ListTasks::default())
        .await
        .is_ok()
    {
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "B still accepts a key A revoked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Tasks submitted through A end while a long-poll waits on B: B answers at once, not when
    // its wait runs out, whichever replica claimed the task (both compete for it; over six
    // tasks A claims some, and only a notification from A can wake B for those).
    let mut agent = AgentProcess::builder(BIN, "code_generator", a.base_url(), ADMIN_KEY)
        .args(["--capacity", "4", "--median-ms", "300", "--p99-ms", "400"])
        .args(["--failure-rate", "0"])
        .start()
        .await
        .expect("agent starts");
    for _ in 0..6 {
        let task = admin_a
            .submit_task(&SubmitTask::new("code_generator", serde_json::json!({})))
            .await
            .unwrap();
        let asked = Instant::now();
        let done = admin_b
            .get_task(task.id, Some(Duration::from_secs(20)))
            .await
            .unwrap();
        assert_eq!(done.status, TaskStatus::Succeeded, "{:?}", done.error);
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "B answered its long-poll after {:?}",
            asked.elapsed()
        );
    }

    // A silence made on one replica is every replica's, and an end on the other ends it.
    let silence = admin_a
        .create_silence(&flotilla_core::wire::NewSilence {
            rule: "response_time_high".to_owned(),
            agent_type: None,
            model: None,
            tenant: None,
            duration_s: 600,
            comment: "maintenance".to_owned(),
        })
        .await
        .unwrap();
    let on_b = admin_b.list_silences().await.unwrap().silences;
    assert_eq!(on_b, std::slice::from_ref(&silence));
    admin_b.delete_silence(silence.id).await.unwrap();
    assert!(admin_a.list_silences().await.unwrap().silences.is_empty());
    // (That a follower answers GET /v1/alerts with the leader's alerts is
    // flotilla-server's tests/alerts.rs, where a rule can be made to fire.)

    agent.terminate().await.ok();
    for mut replica in [a, b] {
        replica.terminate().await.ok();
    }
}
