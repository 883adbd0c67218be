//! The invariant of docs/design.md §4: a task answered `202` reaches a terminal state whatever
//! crashes in between. The control plane is killed with SIGKILL mid-load and restarted; every
//! accepted task must finish, and the ones that were in flight must show the lost attempt.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN, PgDatabase, code_generator_server, wait_terminal};
use flotilla_client::{Client, ListTasks};
use flotilla_core::task::TaskStatus;
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::AgentProcess;
use std::time::{Duration, Instant};

const TASKS: usize = 300;

async fn count(client: &Client, status: TaskStatus) -> usize {
    let filter = ListTasks {
        status: Some(status),
        agent_type: None,
        cursor: None,
        limit: Some(500),
    };
    client
        .list_tasks(&filter)
        .await
        .map(|page| page.tasks.len())
        .unwrap_or(0)
}

async fn killed_mid_load_finishes_every_accepted_task(database_url: Option<&str>) {
    let mut builder = code_generator_server();
    if let Some(url) = database_url {
        builder = builder.args(["--database-url", url]);
    }
    let mut server = builder.start().await.expect("server starts");
    let mut agents = Vec::new();
    for _ in 0..2 {
        let agent = AgentProcess::builder(BIN, "code_generator", server.base_url(), ADMIN_KEY)
            .args([
                "--capacity",
                "8",
                "--median-ms",
                "120",
                "--p99-ms",
                "250",
                "--failure-rate",
                "0",
            ])
            .start()
            .await
            .expect("agent starts");
        agents.push(agent);
    }
    let client = server.client().unwrap();

    // Every submission that is answered 202 is recorded; the set must all finish.
    let submissions = (0..TASKS).map(|n| {
        let client = client.clone();
        async move {
            client
                .submit_task(&SubmitTask::new(
                    "code_generator",
                    serde_json::json!({ "n": n }),
                ))
                .await
        }
    });
    let accepted: Vec<_> = futures::future::join_all(submissions)
        .await
        .into_iter()
        .map(|r| r.expect("202"))
        .collect();
    assert_eq!(accepted.len(), TASKS);

    // Kill while tasks are in flight and others are still queued.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&client, TaskStatus::Succeeded).await < 20
        || count(&client, TaskStatus::Running).await == 0
    {
        assert!(
            Instant::now() < deadline,
            "no progress before the kill\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill_hard().await.expect("SIGKILL");
    server.restart().await.expect("restart");

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
            server.logs()
        );
        lost_attempts += done.attempts.iter().filter(|a| a.outcome == "lost").count();
    }
    assert!(
        lost_attempts > 0,
        "the kill happened with tasks in flight, so some attempts must be recorded as lost"
    );

    for agent in &mut agents {
        agent.terminate().await.expect("agent stops");
    }
    server.terminate().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_control_plane_killed_mid_load_finishes_every_accepted_task() {
    killed_mid_load_finishes_every_accepted_task(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_control_plane_killed_mid_load_finishes_every_accepted_task() {
    let db = PgDatabase::create();
    killed_mid_load_finishes_every_accepted_task(Some(&db.url)).await;
}

/// A task whose every attempt dies with its control plane (here: the control plane is killed
/// while the attempt runs) ends `failed` after `scheduler.max_lost_attempts` losses, saying so,
/// instead of being re-queued for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_lost_with_its_control_plane_twice_fails_saying_so() {
    let mut server = code_generator_server()
        .env("FLOTILLA_SCHEDULER__LEASE_TTL_MS", "1000")
        .env("FLOTILLA_SCHEDULER__MAX_LOST_ATTEMPTS", "2")
        .start()
        .await
        .expect("server starts");
    // The agent takes a minute per task: every attempt is still running when the kill comes.
    let mut agent = AgentProcess::builder(BIN, "code_generator", server.base_url(), ADMIN_KEY)
        .args([
            "--capacity",
            "4",
            "--median-ms",
            "60000",
            "--p99-ms",
            "60000",
            "--failure-rate",
            "0",
        ])
        .start()
        .await
        .expect("agent starts");
    let client = server.client().unwrap();
    let poison = client
        .submit_task(&SubmitTask::new("code_generator", serde_json::json!({})))
        .await
        .expect("202");
    for attempt in 1..=2 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let task = client.get_task(poison.id, None).await.unwrap();
            if task.status == TaskStatus::Running && task.attempt == attempt {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "attempt {attempt} never started: {task:?}\n{}",
                server.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.kill_hard().await.expect("SIGKILL");
        server.restart().await.expect("restart");
    }
    let done = wait_terminal(&client, poison.id, Duration::from_secs(30)).await;
    assert_eq!(
        done.status,
        TaskStatus::Failed,
        "{done:?}\n{}",
        server.logs()
    );
    let error = done.error.unwrap_or_default();
    assert!(
        error.starts_with("lost 2 attempts: ") && error.contains("max_lost_attempts = 2"),
        "{error}"
    );
    let outcomes: Vec<&str> = done.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["lost", "lost"]);
    agent.terminate().await.ok();
    server.terminate().await.expect("server stops");
}
