//! `/metrics` as a real Prometheus server reads it (docs/design.md §11): Prometheus 2.42 (Debian's
//! `prometheus` package, which `.ci/run` installs) scrapes `flotilla serve` every second with an
//! API key, and its query API must report the queue length the control plane holds — and follow
//! it when the queue changes.
//!
//! This is the check that in-process tests of the encoder cannot make: that Prometheus accepts the
//! exposition it negotiates (it asks for OpenMetrics first), authenticates with a bearer token,
//! and stores the samples under the names and labels the alert rules and dashboards query.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN};
use flotilla_client::Client;
use flotilla_core::task::{Task, TaskStatus};
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::ServerProcess;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A static pool with no registered agent: every task submitted to it waits in the queue.
const POOL: &str = "parked";
/// Tasks submitted to the pool.
const SUBMITTED: usize = 7;
/// Tasks cancelled afterwards.
const CANCELLED: usize = 2;
/// The `Accept` header Prometheus 2.42 sends with each scrape: OpenMetrics preferred.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
     application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Between two queries of Prometheus.
const POLL: Duration = Duration::from_millis(200);

/// A `prometheus` server started for one test, with its configuration, storage and log in a
/// temporary directory.
///
/// It is started directly rather than under `timeout(1)`: `timeout` makes itself the leader of a
/// new process group, out of reach of the test runner's group kill, and killing it with SIGKILL
/// would orphan Prometheus. Dropping the guard — also while a failed assertion unwinds — kills
/// the process and reaps it.
struct Prometheus {
    child: tokio::process::Child,
    port: u16,
    http: reqwest::Client,
    log: PathBuf,
    // Deleted after the process (declared first) was killed.
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` (YAML) on a free port of 127.0.0.1.
    fn start(config: &str) -> Prometheus {
        let bin = find_on_path("prometheus").unwrap_or_else(|| {
            panic!(
                "`prometheus` is not on PATH; this test runs the real server. `.ci/run` installs \
                 it (apt-get install -y --no-install-recommends prometheus, Debian's package of \
                 Prometheus 2.42)"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("flotilla-prometheus-")
            .tempdir()
            .expect("temporary directory");
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("prometheus.yml written");
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let port = flotilla_testkit::free_port().expect("free port");
        let child = tokio::process::Command::new(bin)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            port,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
            log,
            _dir: dir,
        }
    }

    /// What Prometheus has logged so far.
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` with `query`, as JSON; `Err` describes why there is no answer yet.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let response = self
            .http
            .get(format!("http://127.0.0.1:{}/api/v1/{path}", self.port))
            .query(query)
            .send()
            .await
            .map_err(|e| format!("GET /api/v1/{path}: {e}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("GET /api/v1/{path}: {status}, not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("GET /api/v1/{path}: {status} {body}"));
        }
        Ok(body["data"].clone())
    }

    /// The value of the one sample an instant query returns now; `Err` describes any other answer.
    async fn single_value(&self, promql: &str) -> Result<String, String> {
        let data = self.api("query", &[("query", promql)]).await?;
        match data["result"].as_array() {
            Some(samples) if data["resultType"] == "vector" && samples.len() == 1 => {
                samples[0]["value"][1]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{promql}: no value in {data}"))
            }
            _ => Err(format!("{promql}: {data}")),
        }
    }

    /// Polls `promql` until its one sample is `expected`, for at most `within`; panics with the
    /// last answer, the scrape target's state and both servers' logs.
    async fn wait_for(
        &self,
        promql: &str,
        expected: &str,
        within: Duration,
        server: &ServerProcess,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let last = match self.single_value(promql).await {
                Ok(value) if value == expected => return started.elapsed(),
                Ok(value) => format!("value {value}"),
                Err(e) => e,
            };
            if started.elapsed() > within {
                let targets = self.api("targets", &[]).await.unwrap_or_else(Value::String);
                panic!(
                    "Prometheus did not report {promql} = {expected} within {within:?}; last \
                     answer: {last}\ntargets: {targets}\n--- prometheus log ---\n{}\n--- \
                     flotilla log ---\n{}",
                    self.logs(),
                    server.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // `kill_on_drop` would kill it too, but not reap it; wait briefly so that no zombie
        // outlives the test and the temporary directory is no longer in use when it is deleted.
        let _ = self.child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(2);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The first executable called `name` in a directory of `PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A scrape configuration for the server on `port`: every second, with the admin key as a bearer
/// token (`/metrics` is not public in the test's configuration).
fn scrape_config(port: u16) -> String {
    format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: flotilla
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials: {ADMIN_KEY}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"#
    )
}

/// `GET /metrics` with `key` (if any) and `accept` (if any).
async fn scrape(
    server: &ServerProcess,
    key: Option<&str>,
    accept: Option<&str>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("{}/metrics", server.base_url()));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(accept) = accept {
        request = request.header(reqwest::header::ACCEPT, accept);
    }
    request.send().await.expect("GET /metrics")
}

/// The exposition `/metrics` answers with the admin key and `accept`, and its content type.
async fn exposition(server: &ServerProcess, accept: Option<&str>) -> (String, String) {
    let response = scrape(server, Some(ADMIN_KEY), accept)
        .await
        .error_for_status()
        .expect("GET /metrics with the admin key");
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        response.text().await.expect("exposition text"),
        content_type,
    )
}

async fn submit(client: &Client, n: usize) -> Vec<Task> {
    let submissions = (0..n).map(|i| {
        let client = client.clone();
        async move {
            client
                .submit_task(&SubmitTask::new(POOL, serde_json::json!({ "n": i })))
                .await
                .expect("202")
        }
    });
    futures::future::join_all(submissions).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_queue_length_flotilla_reports() {
    let started = Instant::now();
    let config = tempfile::Builder::new()
        .prefix("flotilla-prometheus-")
        .suffix(".toml")
        .tempfile()
        .expect("temporary config file");
    std::fs::write(
        config.path(),
        format!(
            r#"
[telemetry]
metrics_public = false

[[pools]]
name = "{POOL}"
provisioner = "static"
"#
        ),
    )
    .expect("config written");
    let server = ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .arg("--config")
        .arg(config.path())
        .start()
        .await
        .expect("server starts");
    let client = server.client().expect("client");

    // Prometheus starts first: it is the slow part (its scrape manager takes up new targets on a
    // 5 s tick, so the first sample comes about 6 s after the start), and the tasks are queued
    // long before then.
    let prometheus_started = Instant::now();
    let prometheus = Prometheus::start(&scrape_config(server.port()));
    let tasks = submit(&client, SUBMITTED).await;
    // An instance of another type, so that `ai_agents_total` — a gauge whose name ends in
    // `_total` — goes through Prometheus's parser too.
    client
        .register_agent(&flotilla_core::wire::RegisterAgent {
            agent_type: "elsewhere".to_owned(),
            url: "http://127.0.0.1:9".to_owned(),
            capacity: 1,
            weight: None,
            metadata: None,
            version: None,
        })
        .await
        .expect("register");
    for task in &tasks {
        let task = client.get_task(task.id, None).await.expect("GET task");
        assert_eq!(
            task.status,
            TaskStatus::Queued,
            "a task of a pool without agents waits: {task:?}"
        );
    }

    // Flotilla's own answer: 7 queued, in the classic format a plain scraper gets and in the
    // OpenMetrics that Prometheus negotiates; and no answer without a key.
    let anonymous = scrape(&server, None, None).await;
    assert_eq!(
        anonymous.status(),
        reqwest::StatusCode::UNAUTHORIZED,
        "/metrics without a key while metrics_public = false"
    );
    let line = format!("ai_agent_queue_length{{agent_type=\"{POOL}\"}} {SUBMITTED}");
    for (accept, format) in [
        (None, "text/plain; version=0.0.4"),
        (Some(PROMETHEUS_ACCEPT), "application/openmetrics-text"),
    ] {
        let (text, content_type) = exposition(&server, accept).await;
        assert!(
            content_type.starts_with(format),
            "/metrics with Accept {accept:?} answered {content_type}, not {format}"
        );
        assert!(
            text.lines().any(|l| l == line),
            "Flotilla's /metrics ({content_type}) lacks `{line}`:\n{text}"
        );
    }

    // Prometheus's answer: the same number, from a healthy, authenticated scrape.
    let query = format!("ai_agent_queue_length{{agent_type=\"{POOL}\"}}");
    prometheus
        .wait_for(
            &query,
            &SUBMITTED.to_string(),
            Duration::from_secs(30),
            &server,
        )
        .await;
    let first_sample = prometheus_started.elapsed();
    prometheus
        .wait_for(
            r#"up{job="flotilla"}"#,
            "1",
            Duration::from_secs(5),
            &server,
        )
        .await;

    prometheus
        .wait_for(
            r#"count(ai_agents_total{type="elsewhere"})"#,
            "1",
            Duration::from_secs(5),
            &server,
        )
        .await;

    // Prometheus follows the queue: two cancellations later it reports 5.
    for task in &tasks[..CANCELLED] {
        let task = client.cancel_task(task.id).await.expect("cancel");
        assert_eq!(task.status, TaskStatus::Cancelled, "{task:?}");
    }
    let followed = prometheus
        .wait_for(
            &query,
            &(SUBMITTED - CANCELLED).to_string(),
            Duration::from_secs(10),
            &server,
        )
        .await;

    // Prometheus logs a warning for every scrape it cannot ingest cleanly; there must be none.
    let logs = prometheus.logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("level=warn") || l.contains("level=error"))
        .filter(|l| l.contains("scrape"))
        .collect();
    assert!(
        warnings.is_empty(),
        "Prometheus warned about the scrape:\n{}",
        warnings.join("\n")
    );
    eprintln!(
        "first sample {first_sample:?} after Prometheus started, the cancellations seen after \
         {followed:?}, {:?} in all",
        started.elapsed()
    );
}
