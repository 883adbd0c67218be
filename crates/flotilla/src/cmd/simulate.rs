//! `flotilla simulate`: compares the balancing strategies (and autoscaling) on a simulated pool.
//! The engine is in `crate::simulate`; this module reads the flags, runs it and prints.

use crate::output::{Output, print_json, table};
use crate::simulate::{self, Autoscaling, Config, Profile, Report, Usd};
use anyhow::Context;
use flotilla_core::balance::StrategyKind;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `flotilla simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Strategy to simulate (round_robin, least_connections, weighted_round_robin, score,
    /// p2c_ewma), or `all` to compare the five on the same arrivals and seed.
    #[arg(long, default_value = "all")]
    pub strategy: String,
    /// Tasks that arrive over the run.
    #[arg(long, default_value_t = 100_000)]
    pub tasks: u64,
    /// Instances at the start.
    #[arg(long, default_value_t = 20)]
    pub instances: u32,
    /// Tasks one instance runs at once.
    #[arg(long, default_value_t = 4)]
    pub capacity: u32,
    /// Nominal median service time of an attempt (ms).
    #[arg(long, default_value_t = 200.0)]
    pub median_ms: f64,
    /// Log-normal σ of an attempt's service time around its instance's median.
    #[arg(long, default_value_t = 0.5)]
    pub sigma: f64,
    /// Share of instances that are slow.
    #[arg(long, default_value_t = 0.2)]
    pub slow_share: f64,
    /// How many times slower a slow instance is.
    #[arg(long, default_value_t = 3.0)]
    pub slow_factor: f64,
    /// Failure probability of an attempt on an ordinary instance.
    #[arg(long, default_value_t = 0.01)]
    pub failure_rate: f64,
    /// Share of instances that fail often.
    #[arg(long, default_value_t = 0.05)]
    pub bad_share: f64,
    /// Failure probability of an attempt on such a bad instance.
    #[arg(long, default_value_t = 0.5)]
    pub bad_failure_rate: f64,
    /// Attempts per task, the first included; failed attempts retry on another instance.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Shape of the arrival rate: steady, ramp (0.2× to 1.5×) or burst (5× for 6 s a minute).
    #[arg(long, value_enum, default_value_t)]
    pub profile: Profile,
    /// Base arrival rate in tasks/s [default: --load × the starting fleet's nominal throughput].
    #[arg(long, conflicts_with = "load")]
    pub rate: Option<f64>,
    /// Base arrival rate as a share of the starting fleet's nominal throughput.
    #[arg(long, default_value_t = 0.7)]
    pub load: f64,
    /// Let the control plane's autoscaler resize the pool.
    #[arg(long)]
    pub autoscale: bool,
    /// Fewest instances when autoscaling.
    #[arg(long, default_value_t = 1)]
    pub min: u32,
    /// Most instances when autoscaling [default: 2 × --instances].
    #[arg(long)]
    pub max: Option<u32>,
    /// Seconds from a scale-up decision until the new instance takes work.
    #[arg(long, default_value_t = 5.0)]
    pub startup_s: f64,
    /// Seconds between the autoscaler's samples.
    #[arg(long, default_value_t = 5.0)]
    pub sample_s: f64,
    /// Turn off passive outlier ejection (on by default, as in the control plane).
    #[arg(long)]
    pub no_ejection: bool,
    /// Price of one instance-hour in USD, for the capacity cost estimate.
    #[arg(long, default_value = "0.50")]
    pub instance_cost_per_hour: Usd,
    /// Seed of every random stream; the same seed gives the same run.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// A table for people, or JSON (with the time series) for programs.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Where to write the SVG plot.
    #[arg(long, default_value = "simulate.svg")]
    pub plot: PathBuf,
    /// Write no plot.
    #[arg(long)]
    pub no_plot: bool,
}

/// The JSON document of `--output json`.
#[derive(Serialize)]
struct Document<'a> {
    simulated: bool,
    note: &'static str,
    config: &'a Config,
    plot: Option<String>,
    runs: Vec<Run<'a>>,
}

#[derive(Serialize)]
struct Run<'a> {
    /// Wall time of the simulation itself, on this machine.
    wall_ms: u128,
    #[serde(flatten)]
    report: &'a Report,
}

const NOTE: &str = "Simulated: a model of a pool driven by the control plane's decision functions, not a measurement; the cost is an estimate of capacity held.";

/// Runs the command.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let strategies: Vec<StrategyKind> = if args.strategy == "all" {
        StrategyKind::ALL.to_vec()
    } else {
        vec![
            args.strategy
                .parse()
                .map_err(|e| anyhow::anyhow!("{e}, or `all`"))?,
        ]
    };
    let config = config(&args)?;
    let mut runs = Vec::with_capacity(strategies.len());
    for kind in strategies {
        if args.output == Output::Table {
            eprintln!("Simulating {kind}…");
        }
        let started = Instant::now();
        let report = simulate::simulate(&config, kind);
        runs.push((report, started.elapsed()));
    }
    let reports: Vec<Report> = runs.iter().map(|(r, _)| r.clone()).collect();
    let plot = if args.no_plot {
        None
    } else {
        simulate::write_svg(&args.plot, &reports, &describe(&config))
            .with_context(|| format!("cannot write the plot to {}", args.plot.display()))?;
        Some(args.plot.display().to_string())
    };
    if args.output == Output::Json {
        return print_json(&Document {
            simulated: true,
            note: NOTE,
            config: &config,
            plot,
            runs: runs
                .iter()
                .map(|(report, wall)| Run {
                    wall_ms: wall.as_millis(),
                    report,
                })
                .collect(),
        });
    }
    print_table(&config, &runs, plot.as_deref());
    Ok(())
}

fn config(args: &SimulateArgs) -> anyhow::Result<Config> {
    let seconds = |name: &str, s: f64| {
        anyhow::ensure!(
            s.is_finite() && (0.0..=86_400.0).contains(&s),
            "--{name} must be between 0 and 86400"
        );
        Ok(Duration::from_secs_f64(s))
    };
    let mut config = Config {
        seed: args.seed,
        tasks: args.tasks,
        instances: args.instances,
        capacity: args.capacity,
        median_ms: args.median_ms,
        sigma: args.sigma,
        slow_share: args.slow_share,
        slow_factor: args.slow_factor,
        failure_rate: args.failure_rate,
        bad_share: args.bad_share,
        bad_failure_rate: args.bad_failure_rate,
        max_attempts: args.max_attempts,
        profile: args.profile,
        rate: 0.0,
        autoscale: None,
        ejection: !args.no_ejection,
        price_per_hour: args.instance_cost_per_hour,
    };
    config.rate = match args.rate {
        Some(rate) => rate,
        None => {
            anyhow::ensure!(
                args.load.is_finite() && args.load > 0.0,
                "--load must be > 0"
            );
            args.load * config.nominal_throughput()
        }
    };
    if args.autoscale {
        config.autoscale = Some(Autoscaling {
            min: args.min,
            max: args
                .max
                .unwrap_or_else(|| args.instances.saturating_mul(2).max(args.min)),
            startup: seconds("startup-s", args.startup_s)?,
            interval: seconds("sample-s", args.sample_s)?,
        });
    }
    config.validate()?;
    Ok(config)
}

/// One line describing the simulated pool and workload.
fn describe(c: &Config) -> String {
    let scaling = match &c.autoscale {
        Some(a) => format!("autoscaling {}–{}", a.min, a.max),
        None => "fixed size".to_owned(),
    };
    format!(
        "{} tasks, {:?} arrivals at {:.1}/s, {} instances × {} ({scaling}), median {} ms, {:.0}% {}× slower, {:.0}% failing {:.0}%, seed {}",
        c.tasks,
        c.profile,
        c.rate,
        c.initial_instances(),
        c.capacity,
        c.median_ms,
        c.slow_share * 100.0,
        c.slow_factor,
        c.bad_share * 100.0,
        c.bad_failure_rate * 100.0,
        c.seed
    )
    .to_lowercase()
}

fn print_table(config: &Config, runs: &[(Report, Duration)], plot: Option<&str>) {
    println!(
        "Simulated pool (a model, not a measurement): {}",
        describe(config)
    );
    let mut t = table([
        "STRATEGY",
        "COMPLETED",
        "FAILED",
        "P50 MS",
        "P95 MS",
        "P99 MS",
        "MEAN UTIL",
        "SCALE EVENTS",
        "PEAK INSTANCES",
        "INSTANCE-HOURS",
        "CAPACITY COST USD (EST.)",
        "WALL",
    ]);
    for (r, wall) in runs {
        t.add_row([
            r.strategy.to_string(),
            r.completed.to_string(),
            r.failed.to_string(),
            format!("{:.0}", r.latency.p50_ms),
            format!("{:.0}", r.latency.p95_ms),
            format!("{:.0}", r.latency.p99_ms),
            format!("{:.2}", r.mean_utilisation),
            r.scale_events.len().to_string(),
            r.peak_instances.to_string(),
            format!("{:.2}", r.instance_hours),
            r.capacity_cost_usd.to_string(),
            format!("{:.1} s", wall.as_secs_f64()),
        ]);
    }
    println!("{t}");
    println!(
        "Latency: simulated, from arrival to the end of the successful attempt (queueing, failed attempts and retry backoff included). Cost: simulated instance-hours × ${}/h, an estimate.",
        config.price_per_hour
    );
    if let Some((r, _)) = runs.last() {
        if let Some(e) = r.scale_events.first() {
            println!(
                "First scale event under {} at {:.0} s: {} → {}, {}.",
                r.strategy, e.at_s, e.from, e.to, e.reason
            );
        }
        if r.ejections > 0 {
            println!("Outlier ejections under {}: {}.", r.strategy, r.ejections);
        }
    }
    if let Some(path) = plot {
        println!("Plot: {path}");
    }
}
