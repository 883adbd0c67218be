//! The `local` provisioner end to end (docs/design.md §5): `flotilla serve` spawns its own
//! `flotilla agent` processes, scales them with the load, restarts one that dies, and takes them
//! all down with it, whether it stops cleanly or is killed.
//!
//! Every test runs the real binary on SQLite and reads the fleet through the public API
//! (`GET /v1/pools`, `GET /v1/events`, `GET /v1/tasks/{id}`), so it breaks when the feature
//! does, whichever layer breaks it. Timing-sensitive settings are shortened in the pool's
//! configuration, and every wait is a poll with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN, wait_terminal};
use flotilla_client::Client;
use flotilla_core::event::Event;
use flotilla_core::task::{Task, TaskStatus};
use flotilla_core::wire::{PoolView, SubmitTask};
use flotilla_testkit::ServerProcess;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::future::Future;
use std::time::{Duration, Instant};

/// The pool every test configures.
const POOL: &str = "code_generator";
/// Between two looks at the fleet.
const POLL: Duration = Duration::from_millis(100);

/// A control plane started with a configuration file, and a client of it.
struct Fleet {
    server: ServerProcess,
    client: Client,
    // The configuration file lives as long as the server may be restarted.
    _config: tempfile::NamedTempFile,
}

impl Fleet {
    /// Starts `flotilla serve` with `config` (TOML) and the admin key of the tests.
    async fn start(config: &str) -> Fleet {
        let file = tempfile::Builder::new()
            .prefix("flotilla-local-pools-")
            .suffix(".toml")
            .tempfile()
            .expect("temporary config file");
        std::fs::write(file.path(), config).expect("config written");
        let server = ServerProcess::builder(BIN)
            .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
            .env("FLOTILLA_SCHEDULER__RETRY_BASE_MS", "50")
            .arg("--config")
            .arg(file.path())
            .start()
            .await
            .expect("server starts");
        let client = server.client().expect("client");
        Fleet {
            server,
            client,
            _config: file,
        }
    }

    /// The pool as `GET /v1/pools` shows it now.
    async fn pool(&self) -> PoolView {
        let pools = self.client.list_pools().await.expect("GET /v1/pools");
        pools
            .pools
            .into_iter()
            .find(|p| p.name == POOL)
            .unwrap_or_else(|| panic!("no pool {POOL} in GET /v1/pools"))
    }

    /// Every event of `kind` for the pool so far, oldest first.
    async fn events(&self, kind: &str) -> Vec<Event> {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .client
                .list_events(&[
                    ("kind", kind.to_owned()),
                    ("agent_type", POOL.to_owned()),
                    ("after", after.to_string()),
                    ("limit", "1000".to_owned()),
                ])
                .await
                .expect("GET /v1/events");
            if page.events.is_empty() {
                return events;
            }
            after = page.next_after.unwrap_or(after);
            events.extend(page.events);
        }
    }

    /// Events of `kind` once `done` holds for them (they reach the store in batches, a moment
    /// after the change they describe).
    async fn events_until(
        &self,
        kind: &str,
        within: Duration,
        done: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        self.eventually(&format!("the {kind} events"), within, || async {
            let events = self.events(kind).await;
            if done(&events) {
                Ok(events)
            } else {
                Err(messages(&events))
            }
        })
        .await
    }

    /// Polls `probe` until it returns `Some`, for at most `within`; panics with `what`, the last
    /// state `probe` described and the server's logs (which hold its agents' output too).
    async fn eventually<T, F, Fut>(&self, what: &str, within: Duration, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + within;
        loop {
            let last = match probe().await {
                Ok(value) => return value,
                Err(last) => last,
            };
            if Instant::now() > deadline {
                panic!(
                    "{what}: not within {within:?}; last seen: {last}\n{}",
                    self.server.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the pool has exactly `n` processes, each running, and `n` registered
    /// instances that take work; returns the pool then.
    async fn wait_for_size(&self, n: usize, within: Duration) -> PoolView {
        self.eventually(
            &format!("{n} running and registered instances"),
            within,
            || async {
                let pool = self.pool().await;
                if pool.processes.len() == n
                    && pool.processes.iter().all(|p| p.pid.is_some())
                    && accepting(&pool) == n
                    && registered(&pool) == n
                {
                    Ok(pool)
                } else {
                    Err(describe(&pool))
                }
            },
        )
        .await
    }

    /// Submits `n` tasks that each take `work_ms` of simulated work.
    async fn submit(&self, n: usize, work_ms: u64) -> Vec<Task> {
        let submissions = (0..n).map(|i| {
            let client = self.client.clone();
            async move {
                client
                    .submit_task(&SubmitTask::new(
                        POOL,
                        serde_json::json!({ "n": i, "simulate": { "duration_ms": work_ms } }),
                    ))
                    .await
                    .expect("202")
            }
        });
        futures::future::join_all(submissions).await
    }

    /// Waits for every task to end; asserts each succeeded and returns their final states.
    async fn all_succeed(&self, tasks: &[Task], within: Duration) -> Vec<Task> {
        let mut done = Vec::with_capacity(tasks.len());
        for task in tasks {
            let task = wait_terminal(&self.client, task.id, within).await;
            assert_eq!(
                task.status,
                TaskStatus::Succeeded,
                "task {} ended {:?} after attempts {:?}: {:?}\n{}",
                task.id,
                task.status,
                task.attempts,
                task.error,
                self.server.logs()
            );
            done.push(task);
        }
        done
    }
}

/// Registered instances of any status.
fn registered(pool: &PoolView) -> usize {
    pool.instances.values().map(|n| *n as usize).sum()
}

/// Registered instances that take work (idle or busy).
fn accepting(pool: &PoolView) -> usize {
    ["idle", "busy"]
        .iter()
        .map(|s| pool.instances.get(*s).copied().unwrap_or(0) as usize)
        .sum()
}

/// The events' messages, one a line.
fn messages(events: &[Event]) -> String {
    events.iter().map(|e| format!("\n{}", e.message)).collect()
}

fn describe(pool: &PoolView) -> String {
    format!(
        "desired {}, instances {:?}, processes {:?}, last decision {:?}",
        pool.desired, pool.instances, pool.processes, pool.last_decision
    )
}

/// The pids of the pool's running processes.
fn pids(pool: &PoolView) -> Vec<u32> {
    pool.processes.iter().filter_map(|p| p.pid).collect()
}

/// `(from, to)` of a scale event `pool code_generator 1 → 3: …`.
fn resize(event: &Event) -> Option<(u32, u32)> {
    let rest = event.message.strip_prefix(&format!("pool {POOL} "))?;
    let (sizes, _reason) = rest.split_once(':')?;
    let (from, to) = sizes.split_once(" → ")?;
    Some((from.trim().parse().ok()?, to.trim().parse().ok()?))
}

/// True when no process `pid` exists any more, or only as a zombie: a dead agent re-parented to
/// an init that does not reap (as in some containers) lingers in the process table, but it runs
/// nothing and holds nothing.
fn is_gone(pid: u32) -> bool {
    let raw = i32::try_from(pid).expect("pid fits an i32");
    match kill(Pid::from_raw(raw), None) {
        Err(Errno::ESRCH) => true,
        // EPERM: it exists but is not ours to signal.
        Err(_) => false,
        Ok(()) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
            // `pid (comm) S …`: the state follows the last parenthesis (comm may hold some).
            .map(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_pool_scales_up_under_load_and_back_down_when_idle() {
    let started = Instant::now();
    let fleet = Fleet::start(&format!(
        r#"
[fleet]
autoscale_interval_ms = 500

[[pools]]
name = "{POOL}"
provisioner = "local"
capacity = 2
min_instances = 1
max_instances = 3

[pools.autoscale]
scale_up_delay_s = 1
scale_down_delay_s = 3
cooldown_s = 1
"#
    ))
    .await;
    // The autoscaler's first round brings the pool to its minimum.
    fleet.wait_for_size(1, Duration::from_secs(15)).await;

    // 30 tasks of 1.5 s on 2 slots would take 22 s; the pool must grow to finish sooner.
    let tasks = fleet.submit(30, 1_500).await;
    let grown = fleet.wait_for_size(3, Duration::from_secs(15)).await;
    assert_eq!(grown.desired, 3, "{}", describe(&grown));
    let done = fleet.all_succeed(&tasks, Duration::from_secs(30)).await;
    // Scale-down drains an instance before stopping it, so no attempt was cut short.
    for task in &done {
        assert!(
            task.attempts.iter().all(|a| a.outcome == "succeeded"),
            "task {} has an attempt that did not succeed: {:?}",
            task.id,
            task.attempts
        );
    }

    // Idle for scale_down_delay_s: back to the minimum, every extra process stopped.
    let shrunk = fleet.wait_for_size(1, Duration::from_secs(15)).await;
    let scale_events = fleet
        .events_until(
            "scale",
            Duration::from_secs(3),
            |events| matches!(events.last().and_then(resize), Some((from, 1)) if from > 1),
        )
        .await;
    let summary = messages(&scale_events);
    let resizes: Vec<(u32, u32)> = scale_events
        .iter()
        .map(|e| resize(e).unwrap_or_else(|| panic!("unexpected scale event:\n{summary}")))
        .collect();
    assert_eq!(
        resizes.first(),
        Some(&(0, 1)),
        "the pool starts at its minimum:\n{summary}"
    );
    let peak = resizes
        .iter()
        .position(|&(from, to)| to == 3 && from < to)
        .unwrap_or_else(|| panic!("no scale-up to 3 under load:\n{summary}"));
    assert_eq!(
        resizes[1].0, 1,
        "the first scale-up starts from the one instance:\n{summary}"
    );
    for (event, &(from, to)) in scale_events[1..=peak].iter().zip(&resizes[1..=peak]) {
        assert!(from < to, "only growth under load:\n{summary}");
        assert!(
            event.message.contains("> 0.80 for 1s, queue "),
            "a scale-up names its reason:\n{summary}"
        );
    }
    let after_peak = &scale_events[peak + 1..];
    assert!(
        !after_peak.is_empty(),
        "no scale-down after the load:\n{summary}"
    );
    for (event, &(from, to)) in after_peak.iter().zip(&resizes[peak + 1..]) {
        assert!(from > to, "only shrinking after the load:\n{summary}");
        assert!(
            event.message.contains("< 0.20 for 3s, queue 0"),
            "a scale-down names its reason:\n{summary}"
        );
    }
    assert_eq!(
        resizes.last().map(|&(_, to)| to),
        Some(1),
        "the pool shrinks back to min_instances:\n{summary}"
    );

    // The stopped processes were asked to stop (SIGTERM, drained, exited), not killed, and
    // none was restarted.
    let survivor = shrunk.processes[0].name.clone();
    let provisioner = fleet
        .events_until("provisioner", Duration::from_secs(3), |events| {
            events
                .iter()
                .filter(|e| e.message.ends_with(" stopped") && !e.message.contains(&survivor))
                .count()
                == 2
        })
        .await;
    let log = messages(&provisioner);
    let started_count = provisioner
        .iter()
        .filter(|e| e.message.contains(" started (pid "))
        .count();
    assert_eq!(started_count, 3, "three processes started:\n{log}");
    assert!(
        !log.contains("restarting"),
        "no process died on its own:\n{log}"
    );
    for n in 1..=3 {
        let name = format!("{POOL}-{n}");
        if name == survivor {
            continue;
        }
        assert!(
            log.contains(&format!("process {name} exited: exit status 0")),
            "{name} exited cleanly on SIGTERM:\n{log}"
        );
        assert!(
            log.contains(&format!("process {name} stopped")),
            "{name} was stopped:\n{log}"
        );
    }
    eprintln!("scaled 1 → 3 → 1 in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_process_is_restarted_and_its_task_retried() {
    let fleet = Fleet::start(&format!(
        r#"
[fleet]
autoscale_interval_ms = 500

[[pools]]
name = "{POOL}"
provisioner = "local"
capacity = 2
min_instances = 2
max_instances = 2

[pools.autoscale]
enabled = false
"#
    ))
    .await;
    fleet.wait_for_size(2, Duration::from_secs(15)).await;

    let tasks = fleet.submit(4, 3_000).await;
    // An instance with work in flight, and the process it runs in.
    let (victim_id, name, pid) = fleet
        .eventually(
            "an agent with a task in flight",
            Duration::from_secs(10),
            || async {
                let agents = fleet.client.list_agents().await.expect("GET /v1/agents");
                let pool = fleet.pool().await;
                agents
                    .agents
                    .iter()
                    .filter(|a| a.agent_type == POOL && a.load > 0)
                    .find_map(|a| {
                        let name = a.metadata.get("instance")?.as_str()?;
                        let process = pool.processes.iter().find(|p| p.name == name)?;
                        Some((a.id, name.to_owned(), process.pid?))
                    })
                    .ok_or_else(|| describe(&pool))
            },
        )
        .await;
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).expect("SIGKILL the agent");

    // The supervisor saw it die and started it again under the same name.
    let exited = format!("process {name} exited: signal 9 (SIGKILL); restarting in 500 ms");
    let restarted = fleet
        .eventually(
            "the exit and restart events",
            Duration::from_secs(10),
            || async {
                let events = fleet.events("provisioner").await;
                let exit = events.iter().position(|e| e.message == exited);
                let start = exit.and_then(|i| {
                    events[i + 1..].iter().find_map(|e| {
                        let pid = e
                            .message
                            .strip_prefix(&format!("process {name} started (pid "))?
                            .strip_suffix(')')?;
                        pid.parse::<u32>().ok()
                    })
                });
                start.ok_or_else(|| {
                    events
                        .iter()
                        .map(|e| e.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            },
        )
        .await;
    assert_ne!(restarted, pid, "a new process, not the killed one");

    // Back to two registered instances, the restarted one counted once.
    let pool = fleet.wait_for_size(2, Duration::from_secs(15)).await;
    let process = pool
        .processes
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{name} is still supervised: {}", describe(&pool)));
    assert_eq!(process.pid, Some(restarted), "{}", describe(&pool));
    assert_eq!(process.restarts, 1, "{}", describe(&pool));
    assert!(
        pool.processes
            .iter()
            .filter(|p| p.name != name)
            .all(|p| p.restarts == 0),
        "only the killed process restarted: {}",
        describe(&pool)
    );

    // The killed instance's work ran again elsewhere (or on its successor) and succeeded.
    let done = fleet.all_succeed(&tasks, Duration::from_secs(30)).await;
    let retried: Vec<&Task> = done
        .iter()
        .filter(|t| {
            t.attempts
                .iter()
                .any(|a| a.agent_id == Some(victim_id) && a.outcome != "succeeded")
        })
        .collect();
    assert!(
        !retried.is_empty(),
        "a task in flight on the killed instance has a failed attempt: {:?}",
        done.iter().map(|t| &t.attempts).collect::<Vec<_>>()
    );
    for task in retried {
        let last = task.attempts.last().expect("attempts are recorded");
        assert_eq!(last.outcome, "succeeded", "{:?}", task.attempts);
        assert_ne!(last.agent_id, Some(victim_id), "{:?}", task.attempts);
        assert!(task.attempts.len() >= 2, "{:?}", task.attempts);
    }
}

/// The configuration of the shutdown tests: two agents, nothing to scale.
fn two_agents() -> String {
    format!(
        r#"
[[pools]]
name = "{POOL}"
provisioner = "local"
capacity = 2
min_instances = 2
max_instances = 2
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_stops_its_agents() {
    let mut fleet = Fleet::start(&two_agents()).await;
    let pool = fleet.wait_for_size(2, Duration::from_secs(15)).await;
    let agents = pids(&pool);
    assert_eq!(agents.len(), 2, "{}", describe(&pool));

    let stopping = Instant::now();
    let status = fleet.server.terminate().await.expect("server stops");
    let took = stopping.elapsed();
    assert!(
        status.success(),
        "clean exit: {status}\n{}",
        fleet.server.logs()
    );
    // Shutdown SIGTERMs the agents and waits for them, so none outlives the server; an agent
    // that ignored SIGTERM would have held it up for the 10 s grace.
    let alive: Vec<u32> = agents.iter().copied().filter(|&p| !is_gone(p)).collect();
    assert!(
        alive.is_empty(),
        "agents {alive:?} outlived the server\n{}",
        fleet.server.logs()
    );
    assert!(
        took < Duration::from_secs(8),
        "shutdown took {took:?}\n{}",
        fleet.server.logs()
    );
    eprintln!("server and its agents stopped in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_leaves_no_agent_behind() {
    let mut fleet = Fleet::start(&two_agents()).await;
    let pool = fleet.wait_for_size(2, Duration::from_secs(15)).await;
    let agents = pids(&pool);
    assert_eq!(agents.len(), 2, "{}", describe(&pool));

    fleet.server.kill_hard().await.expect("SIGKILL the server");
    let killed = Instant::now();
    // Nobody can stop them now: each agent notices it was re-parented and exits.
    let deadline = killed + Duration::from_secs(5);
    loop {
        let alive: Vec<u32> = agents.iter().copied().filter(|&p| !is_gone(p)).collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agents {alive:?} still run 5 s after the server was killed\n{}",
            fleet.server.logs()
        );
        tokio::time::sleep(POLL).await;
    }
    eprintln!(
        "agents gone {:?} after the server was killed",
        killed.elapsed()
    );

    // The next start spawns new agents with a new key and revokes the dead agents' key.
    fleet.server.restart().await.expect("restart");
    fleet.wait_for_size(2, Duration::from_secs(15)).await;
    let keys = fleet.client.list_keys(None).await.unwrap().keys;
    let local: Vec<_> = keys
        .iter()
        .filter(|k| k.name == "local provisioner")
        .collect();
    assert_eq!(local.len(), 2, "{local:?}");
    assert_eq!(
        local.iter().filter(|k| k.revoked_at.is_none()).count(),
        1,
        "{local:?}"
    );
    fleet.server.terminate().await.expect("server stops");
}
