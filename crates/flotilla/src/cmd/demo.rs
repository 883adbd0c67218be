//! `flotilla demo`: the whole system on embedded defaults, with a workload.
//!
//! It starts a control plane on a fresh SQLite data directory with one pool per classic type; the
//! control plane's local provisioner starts the agent processes (`flotilla agent`, whose work is
//! simulated) and autoscales them. It submits a mixed workload, shows progress, and prints a
//! summary with the fleet's scaling decisions. With `--keep` it leaves everything running.

use crate::cmd::serve;
use crate::logging;
use crate::output::table;
use anyhow::{Context, bail};
use flotilla_client::Client;
use flotilla_core::config::{self, LogFormat};
use flotilla_core::id::{AgentId, TaskId};
use flotilla_core::task::{Task, TaskStatus};
use flotilla_core::wire::SubmitTask;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;

/// The classic agent types the demo runs.
pub const DEMO_TYPES: [&str; 3] = ["code_generator", "security_scanner", "performance_tester"];

/// Flags of `flotilla demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Tasks to submit.
    #[arg(long, default_value_t = 300)]
    pub tasks: u32,
    /// Keep submitting for this many seconds instead of stopping at --tasks (e.g. `30s`, `2m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Agent processes per type at start (the pool's minimum).
    #[arg(long, default_value_t = 2)]
    pub agents_per_type: u32,
    /// Most agent processes per type the autoscaler may run.
    #[arg(long, default_value_t = 4)]
    pub max_agents_per_type: u32,
    /// Tasks each agent runs at once.
    #[arg(long, default_value_t = 8)]
    pub capacity: u32,
    /// Median latency of the simulated work, in milliseconds.
    #[arg(long, default_value_t = 40.0)]
    pub median_ms: f64,
    /// 99th percentile latency of the simulated work, in milliseconds.
    #[arg(long, default_value_t = 400.0)]
    pub p99_ms: f64,
    /// Share of simulated calls that fail (and are retried).
    #[arg(long, default_value_t = 0.05)]
    pub failure_rate: f64,
    /// Submissions in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Data directory [default: a fresh temporary directory, removed at the end unless --keep].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the control plane [default: 127.0.0.1:8080 with --keep, else a free port].
    #[arg(long)]
    pub listen: Option<String>,
    /// Leave the control plane and agents running after the workload; stop with Ctrl-C.
    #[arg(long)]
    pub keep: bool,
}

/// What happened to one submitted task.
struct Outcome {
    status: TaskStatus,
    latency: Duration,
    agent_id: Option<AgentId>,
    attempts: i32,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    logging::init(LogFormat::Human, "warn");
    let temp;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("flotilla-demo-")
                .tempdir()?;
            if args.keep {
                temp.keep()
            } else {
                temp.path().to_path_buf()
            }
        }
    };
    let listen = args.listen.clone().unwrap_or_else(|| {
        if args.keep {
            "127.0.0.1:8080"
        } else {
            "127.0.0.1:0"
        }
        .to_owned()
    });
    let exe = std::env::current_exe().context("cannot find the flotilla executable")?;
    let pools = demo_pools(&args, &exe, &data_dir);
    let flags = vec![
        ("server.listen".to_owned(), toml::Value::String(listen)),
        (
            "server.data_dir".to_owned(),
            toml::Value::String(data_dir.display().to_string()),
        ),
    ];
    let config = config::load(Some(("demo pools", &pools)), &[], &flags)?;
    let key = flotilla_server::auth::bootstrap::generate_key();
    let server = serve::start(config, Some(key.clone())).await?;
    let url = format!("http://{}", server.addr);
    println!("Control plane on {url} (SQLite in {})", data_dir.display());

    let client = Client::new(&url, Some(key.clone()))?;
    let expected = DEMO_TYPES.len() * args.agents_per_type as usize;
    wait_for_agents(&client, expected, &data_dir).await?;
    println!(
        "{expected} agent processes started by the control plane and registered ({} per type, up to {} with autoscaling; work is simulated)",
        args.agents_per_type,
        args.max_agents_per_type.max(args.agents_per_type)
    );

    let started = Instant::now();
    let outcomes = run_workload(&args, &client).await;
    let elapsed = started.elapsed();
    let outcomes = outcomes?;
    print_summary(&client, &outcomes, elapsed).await?;
    let unfinished = outcomes.iter().filter(|o| !o.status.is_terminal()).count();

    if args.keep {
        println!(
            "\nStill running (Ctrl-C to stop):\n  API:     {url}/v1\n  OpenAPI: {url}/openapi.json\n  Admin key: {key}"
        );
        println!("  Try:     FLOTILLA_URL={url} FLOTILLA_KEY={key} flotilla agents list");
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    }
    // Stopping the control plane drains and stops its agent processes.
    server.stop().await;
    if unfinished > 0 {
        bail!("{unfinished} tasks did not reach a terminal state");
    }
    Ok(())
}

/// One local pool per demo type, sized by the flags, autoscaling on short delays so that the
/// demo shows it.
fn demo_pools(args: &DemoArgs, exe: &std::path::Path, data_dir: &std::path::Path) -> String {
    let min = args.agents_per_type.max(1);
    let max = args.max_agents_per_type.max(min);
    let quote = |s: &str| format!("{s:?}");
    let mut text = format!(
        "[fleet]\nautoscale_interval_ms = 1000\nagent_log_dir = {}\n",
        quote(&data_dir.join("agents").display().to_string())
    );
    for agent_type in DEMO_TYPES {
        let command = [
            exe.display().to_string(),
            "agent".to_owned(),
            "--type".to_owned(),
            agent_type.to_owned(),
            "--capacity".to_owned(),
            args.capacity.to_string(),
            "--median-ms".to_owned(),
            args.median_ms.to_string(),
            "--p99-ms".to_owned(),
            args.p99_ms.to_string(),
            "--failure-rate".to_owned(),
            args.failure_rate.to_string(),
        ]
        .iter()
        .map(|s| quote(s))
        .collect::<Vec<_>>()
        .join(", ");
        text.push_str(&format!(
            "[[pools]]\nname = \"{agent_type}\"\nprovisioner = \"local\"\ncapacity = {}\n\
             min_instances = {min}\nmax_instances = {max}\ncommand = [{command}]\n\
             [pools.autoscale]\nscale_up_delay_s = 2\nscale_down_delay_s = 10\ncooldown_s = 3\n",
            args.capacity
        ));
    }
    text
}

async fn wait_for_agents(
    client: &Client,
    expected: usize,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let registered = client.list_agents().await?.agents.len();
        if registered >= expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {registered} of {expected} agents registered within 30 s; see their logs in {}",
                data_dir.join("agents").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_workload(args: &DemoArgs, client: &Client) -> anyhow::Result<Vec<Outcome>> {
    let total = if args.duration.is_some() {
        None
    } else {
        Some(args.tasks)
    };
    let bar = match total {
        Some(n) => ProgressBar::new(u64::from(n)),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} tasks finished ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut running = tokio::task::JoinSet::new();
    let mut submitted = 0u32;
    loop {
        let more = match (total, deadline) {
            (Some(n), _) => submitted < n,
            (None, Some(at)) => Instant::now() < at,
            (None, None) => false,
        };
        if !more {
            break;
        }
        let permit = permits.clone().acquire_owned().await?;
        let (agent_type, priority) = {
            let mut rng = rand::rng();
            (
                DEMO_TYPES[rng.random_range(0..DEMO_TYPES.len())],
                rng.random_range(0..=9),
            )
        };
        let n = submitted;
        submitted += 1;
        let client = client.clone();
        let bar = bar.clone();
        running.spawn(async move {
            let _permit = permit;
            let outcome = one_task(&client, agent_type, priority, n).await;
            bar.inc(1);
            outcome
        });
    }
    bar.set_length(u64::from(submitted));
    let mut outcomes = Vec::with_capacity(submitted as usize);
    while let Some(joined) = running.join_next().await {
        outcomes.push(joined??);
    }
    bar.finish();
    Ok(outcomes)
}

async fn one_task(
    client: &Client,
    agent_type: &str,
    priority: i32,
    n: u32,
) -> anyhow::Result<Outcome> {
    // Every task's agent makes one model call through the gateway (simulated provider).
    let model = ["gpt-4o", "claude-sonnet-3.5", "gemini-2.0-flash"][n as usize % 3];
    let input = serde_json::json!({
        "demo_task": n,
        "description": format!("demo {agent_type} task #{n}"),
        "model": model,
    });
    let submission = SubmitTask {
        priority: Some(priority),
        ..SubmitTask::new(agent_type, input)
    };
    let started = Instant::now();
    let task = client.submit_task(&submission).await?;
    let task = wait_terminal(client, task.id).await?;
    Ok(Outcome {
        status: task.status,
        latency: started.elapsed(),
        agent_id: task.agent_id,
        attempts: task.attempt,
    })
}

async fn wait_terminal(client: &Client, id: TaskId) -> anyhow::Result<Task> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let task = client.get_task(id, Some(Duration::from_secs(20))).await?;
        if task.status.is_terminal() || Instant::now() > deadline {
            return Ok(task);
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn print_summary(
    client: &Client,
    outcomes: &[Outcome],
    elapsed: Duration,
) -> anyhow::Result<()> {
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes {
        *by_status.entry(o.status.as_str()).or_default() += 1;
    }
    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    latencies.sort();
    let retries: i64 = outcomes
        .iter()
        .map(|o| i64::from(o.attempts.max(1) - 1))
        .sum();
    let throughput = outcomes.len() as f64 / elapsed.as_secs_f64().max(f64::EPSILON);

    println!("\nWorkload summary (agent work is simulated)");
    let mut status_table = table(["STATUS", "TASKS"]);
    for (status, n) in &by_status {
        status_table.add_row([(*status).to_owned(), n.to_string()]);
    }
    println!("{status_table}");
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let mut figures = table(["FIGURE", "VALUE"]);
    figures.add_row(["tasks".to_owned(), outcomes.len().to_string()]);
    figures.add_row([
        "wall time".to_owned(),
        format!("{:.2} s", elapsed.as_secs_f64()),
    ]);
    figures.add_row(["throughput".to_owned(), format!("{throughput:.1} tasks/s")]);
    figures.add_row([
        "latency p50 (submit → result)".to_owned(),
        ms(percentile(&latencies, 50.0)),
    ]);
    figures.add_row(["latency p95".to_owned(), ms(percentile(&latencies, 95.0))]);
    figures.add_row(["latency p99".to_owned(), ms(percentile(&latencies, 99.0))]);
    figures.add_row(["retries (extra attempts)".to_owned(), retries.to_string()]);
    println!("{figures}");

    let agents = client.list_agents().await?.agents;
    let mut per_instance: BTreeMap<AgentId, usize> = BTreeMap::new();
    for o in outcomes {
        if let Some(id) = o.agent_id {
            *per_instance.entry(id).or_default() += 1;
        }
    }
    let mut instances = table(["INSTANCE", "TYPE", "TASKS (last attempt)"]);
    for agent in &agents {
        instances.add_row([
            agent.id.to_string(),
            agent.agent_type.clone(),
            per_instance
                .get(&agent.id)
                .copied()
                .unwrap_or(0)
                .to_string(),
        ]);
    }
    println!("{instances}");

    let events = client
        .list_events(&[("kind", "scale".to_owned()), ("limit", "50".to_owned())])
        .await?
        .events;
    let mut decisions = table(["TIME", "SCALING DECISION"]);
    for e in &events {
        decisions.add_row([e.at.format("%H:%M:%S").to_string(), e.message.clone()]);
    }
    println!("{decisions}");
    println!("(every fleet event: flotilla events list; pools: flotilla pools list)");

    // The usage ledger writes in batches (every second by default).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let analysis = client.cost_analysis(Some(1), None).await?;
    let mut models = table(["MODEL (simulated provider)", "CALLS", "COST (USD)", "SHARE"]);
    for m in &analysis.by_model {
        models.add_row([
            m.name.clone(),
            m.calls.to_string(),
            m.cost.to_string(),
            format!("{:.0} %", m.share * 100.0),
        ]);
    }
    println!(
        "\nModel calls the agents made through the gateway, priced at list prices (answers simulated)"
    );
    println!("{models}");
    println!(
        "total ${} (flotilla cost report, flotilla usage list, flotilla budgets set monthly 10)",
        analysis.total
    );
    Ok(())
}
