//! `flotilla doctor`: diagnoses a running deployment.
//!
//! The shell of `flotilla_core::diagnosis`: it gathers facts over HTTP (the control plane's
//! probes, `/v1/system`, `/metrics`, pools, agents, alerts, keys, secrets, the audit log, and a
//! Prometheus server when given), hands them to `diagnose`, prints the report and exits 0
//! (healthy), 1 (warning) or 2 (unhealthy or critical). What it cannot measure it reports as
//! such. It never prints the key.

use crate::cmd::Connection;
use crate::output::{Output, print_json};
use flotilla_client::{Client, ClientError, TlsOptions};
use flotilla_core::diagnosis::{
    AUTH_FAILURE_WINDOW_HOURS, AuthFailures, BudgetFact, CpuWindow, Facts, Gathered, KeyCheck,
    ProbeResult, PrometheusFacts, ProviderFact, Report, Severity, diagnose, summarise_metrics,
};
use std::io::Write;
use std::time::{Duration, Instant};

/// Time between the two CPU samples.
const CPU_WINDOW: Duration = Duration::from_secs(1);
/// Audit pages read at most for the authentication-failure count.
const MAX_AUDIT_PAGES: usize = 20;
const AUDIT_PAGE: u32 = 1000;
const FLEET_FORBIDDEN: &str = "the key's role may not read the fleet";

/// `flotilla doctor`.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    connection: Connection,
    /// A Prometheus server that scrapes this control plane (its base URL).
    #[arg(long, value_name = "URL")]
    prometheus: Option<String>,
    /// Also report the pods of pools that use the kubernetes provisioner.
    #[arg(long)]
    kube: bool,
    /// `json` prints the report for programs.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    /// The older spelling of `--output json`.
    #[arg(long, hide = true, conflicts_with = "output")]
    json: bool,
    /// Warn when the data directory's volume has less than this share free, in percent (fail
    /// below half of it).
    #[arg(long, value_name = "PERCENT", default_value_t = 10.0)]
    min_disk_free: f64,
    /// Limit on each request.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Runs the diagnosis, prints it and exits with its code.
pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let facts = gather(&args).await?;
    let report = diagnose(&facts);
    if args.json || args.output == Output::Json {
        print_json(&report)?;
    } else {
        print!("{}", render(&report));
    }
    std::io::stdout().flush()?;
    if report.exit_code != 0 {
        std::process::exit(i32::from(report.exit_code));
    }
    Ok(())
}

fn probe(result: Result<flotilla_core::wire::Probe, ClientError>) -> ProbeResult {
    match result {
        Ok(_) => ProbeResult::Ok,
        Err(e) if e.is_transport() => ProbeResult::Unreachable(e.to_string()),
        Err(ClientError::Api { status, error }) => {
            ProbeResult::Failed(format!("HTTP {status}: {}", error.message))
        }
        Err(e) => ProbeResult::Failed(e.to_string()),
    }
}

/// A measured value, or why not; `forbidden` words a 403.
fn gathered<T>(result: Result<T, ClientError>, forbidden: &str) -> Gathered<T> {
    match result {
        Ok(v) => Gathered::Measured(v),
        Err(e) if e.status() == Some(403) => Gathered::Unavailable(forbidden.to_owned()),
        Err(e) => Gathered::Unavailable(e.to_string()),
    }
}

fn unavailable<T>(why: &str) -> Gathered<T> {
    Gathered::Unavailable(why.to_owned())
}

async fn gather(args: &DoctorArgs) -> anyhow::Result<Facts> {
    let c = &args.connection;
    let tls = TlsOptions {
        ca_file: c.ca_file.clone(),
        client_cert: c.client_cert.clone(),
        client_key: c.client_key.clone(),
    };
    let anonymous = Client::with_tls(&c.url, None, &tls)?.with_request_timeout(args.timeout);
    let now = chrono::Utc::now();
    let health = probe(anonymous.health().await);
    let ready = probe(anonymous.ready().await);
    let mut facts = Facts {
        now,
        url: anonymous.base_url().to_owned(),
        health,
        ready,
        key: KeyCheck::Missing,
        system: unavailable("no API key"),
        cpu: unavailable("no API key"),
        metrics: unavailable("no API key"),
        metrics_open: unavailable("not checked"),
        prometheus: None,
        pools: unavailable("no API key"),
        agents: unavailable("no API key"),
        alerts: unavailable("no API key"),
        keys: unavailable("no API key"),
        secrets: unavailable("no API key"),
        auth_failures: unavailable("no API key"),
        kube: args.kube,
        min_disk_free: (args.min_disk_free / 100.0).clamp(0.0, 1.0),
        providers: unavailable("no API key"),
        budgets: unavailable("no API key"),
    };
    if let Some(url) = &args.prometheus {
        facts.prometheus = Some(prometheus(url, args.timeout).await);
    }
    if let ProbeResult::Unreachable(_) = facts.health {
        let why = "the server is unreachable";
        facts.key = KeyCheck::Untested(why.to_owned());
        for g in [
            &mut facts.system as &mut dyn SetUnavailable,
            &mut facts.cpu,
            &mut facts.metrics,
            &mut facts.metrics_open,
            &mut facts.pools,
            &mut facts.agents,
            &mut facts.alerts,
            &mut facts.keys,
            &mut facts.secrets,
            &mut facts.auth_failures,
        ] {
            g.set_unavailable(why);
        }
        return Ok(facts);
    }
    facts.metrics_open = match anonymous.metrics_text().await {
        Ok(_) => Gathered::Measured(true),
        Err(e) if e.status() == Some(401) => Gathered::Measured(false),
        Err(e) => Gathered::Unavailable(e.to_string()),
    };
    if c.key.is_none() {
        return Ok(facts);
    }
    let client = c.client()?.with_request_timeout(args.timeout);
    let started = Instant::now();
    let first = client.system().await;
    let first_cpu = first.as_ref().ok().and_then(|s| s.process.cpu_seconds);
    match first {
        Ok(system) => {
            facts.key = KeyCheck::Accepted;
            facts.system = Gathered::Measured(system);
        }
        Err(ClientError::Api { status: 401, error }) => {
            facts.key = KeyCheck::Rejected(error.message);
            let why = "authentication failed";
            for g in [
                &mut facts.system as &mut dyn SetUnavailable,
                &mut facts.cpu,
                &mut facts.metrics,
                &mut facts.pools,
                &mut facts.agents,
                &mut facts.alerts,
                &mut facts.keys,
                &mut facts.secrets,
                &mut facts.auth_failures,
            ] {
                g.set_unavailable(why);
            }
            return Ok(facts);
        }
        Err(e) => {
            // A 403: the key works, but its role may not read the fleet (e.g. an agent key).
            facts.key = if e.status() == Some(403) {
                KeyCheck::Accepted
            } else {
                KeyCheck::Untested(e.to_string())
            };
            facts.system = gathered(Err(e), FLEET_FORBIDDEN);
        }
    }
    let (metrics, pools, agents, alerts, keys, secrets, auth_failures) = tokio::join!(
        client.metrics_text(),
        client.list_pools(),
        client.list_agents(),
        client.list_alerts(),
        client.list_keys(None),
        client.list_secrets(None, None),
        auth_failures(&client, now),
    );
    facts.metrics = gathered(metrics.map(|t| summarise_metrics(&t)), "forbidden");
    facts.pools = gathered(pools.map(|p| p.pools), FLEET_FORBIDDEN);
    facts.agents = gathered(agents.map(|a| a.agents), FLEET_FORBIDDEN);
    facts.alerts = gathered(
        alerts.map(|a| a.alerts),
        "the key's role may not read alerts",
    );
    facts.keys = gathered(keys.map(|k| k.keys), "the key's role may not read keys");
    facts.secrets = gathered(
        secrets.map(|s| s.secrets),
        "the key's role may not list secrets",
    );
    facts.auth_failures = auth_failures;
    facts.providers = match &facts.system {
        Gathered::Measured(system) => Gathered::Measured(
            system
                .providers
                .iter()
                .map(|p| ProviderFact {
                    name: format!("{} ({})", p.name, p.kind),
                    reachable: p.reachable,
                    detail: p.detail.clone(),
                })
                .collect(),
        ),
        Gathered::Unavailable(why) => Gathered::Unavailable(why.clone()),
    };
    facts.budgets = budgets(&client).await;
    facts.cpu = match (&facts.system, first_cpu) {
        (Gathered::Unavailable(why), _) => Gathered::Unavailable(why.clone()),
        (Gathered::Measured(_), None) => unavailable("the server cannot read its CPU time"),
        (Gathered::Measured(_), Some(a)) => {
            tokio::time::sleep(CPU_WINDOW.saturating_sub(started.elapsed())).await;
            let second = client.system().await;
            let elapsed_s = started.elapsed().as_secs_f64();
            match second.map(|s| s.process.cpu_seconds) {
                Ok(Some(b)) => Gathered::Measured(CpuWindow {
                    first_cpu_seconds: a,
                    second_cpu_seconds: b,
                    elapsed_s,
                }),
                Ok(None) => unavailable("the server cannot read its CPU time"),
                Err(e) => Gathered::Unavailable(e.to_string()),
            }
        }
    };
    Ok(facts)
}

/// Every budget the key may read (its tenant's; an admin's: every tenant's), with this month's
/// projection for monthly budgets.
async fn budgets(client: &Client) -> Gathered<Vec<BudgetFact>> {
    let tenants: Vec<(Option<String>, String)> = match client.list_tenants().await {
        Ok(list) => list
            .tenants
            .into_iter()
            .map(|t| (Some(t.id.to_string()), t.name))
            .collect(),
        // Not an admin: its own tenant only.
        Err(_) => vec![(None, "own tenant".to_owned())],
    };
    let mut facts = Vec::new();
    for (tenant, name) in tenants {
        let list = match client.list_budgets(tenant.as_deref()).await {
            Ok(l) => l,
            Err(e) => return Gathered::Unavailable(format!("cannot read budgets: {e}")),
        };
        for b in list.budgets {
            let projected = if b.budget.period == flotilla_core::budget::Period::Monthly {
                client
                    .cost_analysis(Some(1), tenant.as_deref())
                    .await
                    .ok()
                    .and_then(|a| a.budget)
                    .map(|u| u.projected_utilisation)
            } else {
                None
            };
            facts.push(BudgetFact {
                name: format!("{name} {}", b.budget.period.as_str()),
                utilisation: b.utilisation,
                projected,
            });
        }
    }
    Gathered::Measured(facts)
}

/// Lets the early exits mark every remaining fact unmeasured in one loop.
trait SetUnavailable {
    fn set_unavailable(&mut self, why: &str);
}

impl<T> SetUnavailable for Gathered<T> {
    fn set_unavailable(&mut self, why: &str) {
        *self = Gathered::Unavailable(why.to_owned());
    }
}

/// Authentication failures of the last day, from the audit log (admin keys only).
async fn auth_failures(
    client: &Client,
    now: chrono::DateTime<chrono::Utc>,
) -> Gathered<AuthFailures> {
    let since = now - chrono::Duration::hours(AUTH_FAILURE_WINDOW_HOURS);
    let mut after: Option<i64> = None;
    let mut recent = 0;
    for _ in 0..MAX_AUDIT_PAGES {
        let mut query = vec![
            ("action", "auth.failure".to_owned()),
            ("limit", AUDIT_PAGE.to_string()),
        ];
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        let page = match client.list_audit(&query).await {
            Ok(page) => page,
            Err(e) if e.status() == Some(403) => return unavailable("needs an admin key"),
            Err(e) => return Gathered::Unavailable(e.to_string()),
        };
        recent += page.entries.iter().filter(|e| e.at >= since).count() as u64;
        match page.next_after {
            Some(next) => after = Some(next),
            None => {
                return Gathered::Measured(AuthFailures {
                    recent,
                    capped: false,
                });
            }
        }
    }
    Gathered::Measured(AuthFailures {
        recent,
        capped: true,
    })
}

/// One instant query of the Prometheus HTTP API: each series' value.
async fn prometheus_query(
    http: &reqwest::Client,
    base: &str,
    query: &str,
) -> anyhow::Result<Vec<f64>> {
    let body: serde_json::Value = http
        .get(format!("{}/api/v1/query", base.trim_end_matches('/')))
        .query(&[("query", query)])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    if body["status"] != "success" {
        anyhow::bail!("query `{query}` failed: {}", body["error"]);
    }
    let values = match &body["data"]["result"] {
        serde_json::Value::Array(series) => series
            .iter()
            .filter_map(|s| s["value"][1].as_str())
            .filter_map(|v| v.parse::<f64>().ok())
            .collect(),
        _ => Vec::new(),
    };
    Ok(values)
}

async fn prometheus(url: &str, timeout: Duration) -> Gathered<PrometheusFacts> {
    let http = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(http) => http,
        Err(e) => return Gathered::Unavailable(e.to_string()),
    };
    let up = match prometheus_query(&http, url, "up").await {
        Ok(up) => up,
        Err(e) => return Gathered::Unavailable(format!("{e:#}")),
    };
    let series = prometheus_query(&http, url, "ai_agent_queue_length")
        .await
        .map(|v| v.len())
        .unwrap_or(0);
    let finite = |v: anyhow::Result<Vec<f64>>| {
        v.ok()
            .and_then(|v| v.first().copied())
            .filter(|v| v.is_finite())
    };
    let p95 = finite(
        prometheus_query(
            &http,
            url,
            "histogram_quantile(0.95, sum by (le) (rate(ai_task_duration_seconds_bucket[5m])))",
        )
        .await,
    );
    let error_rate = finite(
        prometheus_query(
            &http,
            url,
            "sum(rate(ai_agent_requests_total{endpoint=\"execute\",status=~\"error|timeout\"}[5m])) \
             / sum(rate(ai_agent_requests_total{endpoint=\"execute\"}[5m]))",
        )
        .await,
    );
    Gathered::Measured(PrometheusFacts {
        targets_up: up.iter().filter(|v| **v >= 1.0).count() as u32,
        targets_down: up.iter().filter(|v| **v < 1.0).count() as u32,
        queue_series: u32::try_from(series).unwrap_or(u32::MAX),
        task_p95_s: p95,
        error_rate,
    })
}

/// The report for people.
fn render(report: &Report) -> String {
    let mut out = format!(
        "Flotilla doctor — {} at {}\n",
        report.url,
        report.at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    for section in &report.sections {
        out.push_str(&format!("\n{}\n", section.name));
        for check in &section.checks {
            out.push_str(&format!(
                "  {} {}: {}\n",
                check.severity.symbol(),
                check.name,
                check.summary
            ));
        }
    }
    let recommendations = report.recommendations();
    if !recommendations.is_empty() {
        out.push_str("\nRecommendations\n");
        for check in recommendations {
            if let Some(advice) = &check.recommendation {
                out.push_str(&format!(
                    "  {} {}: {advice}\n",
                    check.severity.symbol(),
                    check.name
                ));
            }
        }
    }
    let counts = |s: Severity| {
        report
            .sections
            .iter()
            .flat_map(|x| &x.checks)
            .filter(|c| c.severity == s)
            .count()
    };
    out.push_str(&format!(
        "\nStatus: {} ({} ok, {} warning, {} failing, {} not measured)\n",
        report.status.as_str(),
        counts(Severity::Ok),
        counts(Severity::Warning),
        counts(Severity::Error) + counts(Severity::Critical),
        counts(Severity::Unknown)
    ));
    out
}
