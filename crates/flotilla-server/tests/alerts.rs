//! The alert engine end to end (docs/design.md §11): a rule over a real signal goes pending, fires
//! after its duration, notifies real HTTP receivers (signed JSON and Slack format), asks for
//! capacity, resolves when the signal recovers, and keeps every transition in its history. A
//! receiver that keeps failing gets retries, then the failure is recorded — never dropped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use flotilla_core::wire::SubmitTask;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{ADMIN_KEY, Backend, Settings, TestServer, eventually};

const SECRET: &str = "webhook-secret-for-tests";

#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    /// The status it answers (200 unless set).
    status: Arc<AtomicU16>,
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        receiver.status.store(200, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = Router::new()
            .fallback(
                |State(r): State<Receiver>, headers: HeaderMap, body: Bytes| async move {
                    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    // Keep the raw body for signature checks.
                    let mut headers = headers;
                    headers.insert(
                        "x-test-raw-body",
                        String::from_utf8_lossy(&body).parse().unwrap(),
                    );
                    r.seen.lock().unwrap().push((headers, value));
                    StatusCode::from_u16(r.status.load(Ordering::SeqCst)).unwrap()
                },
            )
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn bodies(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn rule_settings(json_url: &str, slack_url: &str, pagerduty_url: &str) -> Settings {
    Settings::default()
        .set("alerting.interval_ms", 100)
        .set("alerting.default_rules", false)
        .raw(&format!(
            "[[alerting.webhooks]]\nurl = \"{json_url}\"\nformat = \"json\"\nsecret = \"{SECRET}\"\n\
             [[alerting.webhooks]]\nurl = \"{slack_url}\"\nformat = \"slack\"\n\
             [[alerting.webhooks]]\nurl = \"{pagerduty_url}\"\nformat = \"pagerduty\"\nrouting_key = \"R0UT1NGKEY\"\n\
             [[alerts]]\nname = \"backlog\"\nsignal = \"queue_length\"\nagent_type = \"parked\"\n\
             comparison = \">\"\nthreshold = 2\nfor = \"1s\"\nseverity = \"warning\"\n\
             labels = {{ team = \"ml\" }}\nactions = [\"notify\", \"scale_up\"]\n"
        ))
        .pool("parked")
}

/// The secret path of the webhook URLs the tests configure appears in no event, alert history
/// entry or audit entry.
async fn assert_url_appears_nowhere(server: &TestServer) {
    for path in [
        "/v1/events?limit=1000",
        "/v1/alerts/history",
        "/v1/audit?limit=1000",
    ] {
        let (status, body) = server
            .send(ADMIN_KEY, reqwest::Method::GET, path, None)
            .await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.to_string().contains("T0P-SECRET"), "{path}: {body}");
    }
}

async fn history(server: &TestServer) -> Vec<String> {
    server
        .client
        .alert_history(&[])
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_goes_pending_fires_notifies_and_resolves() {
    let (json_hook, json_url) = Receiver::start().await;
    let (slack_hook, slack_url) = Receiver::start().await;
    let (pagerduty, pagerduty_url) = Receiver::start().await;
    let settings = rule_settings(&json_url, &slack_url, &pagerduty_url);
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(server.submit(&SubmitTask::new("parked", json!({}))).await);
    }
    eventually("the alert is pending", Duration::from_secs(5), || async {
        let alerts = server.client.list_alerts().await.unwrap().alerts;
        alerts
            .iter()
            .any(|a| a.rule == "backlog" && a.state == "pending")
    })
    .await;
    eventually("the alert fires", Duration::from_secs(5), || async {
        let alerts = server.client.list_alerts().await.unwrap().alerts;
        alerts.iter().any(|a| {
            a.rule == "backlog"
                && a.state == "firing"
                && a.value == 3.0
                && a.agent_type.as_deref() == Some("parked")
                && a.labels.get("team").map(String::as_str) == Some("ml")
        })
    })
    .await;

    // The JSON receiver got the firing notification, signed.
    eventually(
        "the JSON webhook is called",
        Duration::from_secs(5),
        || async { !json_hook.bodies().is_empty() },
    )
    .await;
    let (headers, body) = json_hook.seen.lock().unwrap()[0].clone();
    assert_eq!(body["status"], "firing", "{body}");
    assert_eq!(body["rule"], "backlog");
    assert_eq!(body["value"], 3.0);
    assert_eq!(body["threshold"], 2.0);
    assert_eq!(body["severity"], "warning");
    let signature = headers["x-flotilla-signature"].to_str().unwrap();
    let raw = headers["x-test-raw-body"].to_str().unwrap();
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|s| s.split_once(",v1="))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{raw}").as_bytes());
    assert_eq!(
        v1,
        hex::encode(mac.finalize().into_bytes()),
        "the signature verifies"
    );

    // The Slack receiver got an attachment coloured for a warning, with the figures.
    eventually(
        "the Slack webhook is called",
        Duration::from_secs(5),
        || async { !slack_hook.bodies().is_empty() },
    )
    .await;
    let slack = slack_hook.bodies()[0].clone();
    assert_eq!(slack["attachments"][0]["color"], "#daa038", "{slack}");
    let fields: Vec<&str> = slack["attachments"][0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["title"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["Severity", "Value", "Threshold", "Duration"]);
    assert!(slack.get("text").is_some());

    // The queue drains: the alert resolves and the receivers are told.
    for task in &tasks {
        server.client.cancel_task(task.id).await.unwrap();
    }
    eventually("the alert resolves", Duration::from_secs(5), || async {
        server.client.list_alerts().await.unwrap().alerts.is_empty()
    })
    .await;
    eventually(
        "the resolution is notified",
        Duration::from_secs(5),
        || async {
            json_hook.bodies().iter().any(|b| b["status"] == "resolved")
                && slack_hook
                    .bodies()
                    .iter()
                    .any(|b| b["attachments"][0]["color"] == "#2eb886")
        },
    )
    .await;
    // PagerDuty: a trigger, then a resolve of the same incident.
    eventually(
        "PagerDuty is triggered then resolved",
        Duration::from_secs(5),
        || async { pagerduty.bodies().len() == 2 },
    )
    .await;
    let events = pagerduty.bodies();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["event_action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["trigger", "resolve"]);
    assert_eq!(events[0]["dedup_key"], "flotilla/backlog/parked");
    assert_eq!(events[0]["dedup_key"], events[1]["dedup_key"]);
    assert_eq!(events[0]["routing_key"], "R0UT1NGKEY");
    assert_eq!(events[0]["payload"]["severity"], "warning");
    assert_eq!(events[0]["payload"]["source"], "flotilla");
    assert_eq!(events[0]["payload"]["custom_details"]["value"], 3.0);
    eventually(
        "the history has every transition",
        Duration::from_secs(5),
        || async {
            let h = history(&server).await;
            let has = |s: &str| h.iter().any(|m| m.starts_with(s));
            has("alert backlog [parked] pending: queue_length 3.000 > 2 for 1s (warning)")
                && has("alert backlog [parked] firing:")
                && has("alert backlog [parked] resolved:")
        },
    )
    .await;
    // scale_up on a static pool is a recommendation, as an event.
    let scale = server
        .client
        .list_events(&[("kind", "scale".to_owned())])
        .await
        .unwrap()
        .events;
    assert!(
        scale
            .iter()
            .any(|e| e.message
                == "pool parked 0 → 1 recommended (static pool): alert backlog is firing"),
        "{scale:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_and_the_failure_recorded() {
    let (json_hook, json_url) = Receiver::start().await;
    let (slack_hook, slack_url) = Receiver::start().await;
    let (_pagerduty, pagerduty_url) = Receiver::start().await;
    json_hook.status.store(500, Ordering::SeqCst);
    // A Slack-style URL is a credential: it must appear in no event, audit entry or answer.
    let json_url = format!("{json_url}/T0P-SECRET-PATH");
    let settings = rule_settings(&json_url, &slack_url, &pagerduty_url);
    let server = TestServer::start(Backend::Sqlite, settings).await;
    for _ in 0..3 {
        server.submit(&SubmitTask::new("parked", json!({}))).await;
    }
    eventually(
        "the failure is in the history",
        Duration::from_secs(10),
        || async {
            history(&server).await.iter().any(|m| {
                m == "notification of alert backlog (firing) to webhook #1 (127.0.0.1) \
                      failed after 4 attempts: HTTP 500"
            })
        },
    )
    .await;
    assert_url_appears_nowhere(&server).await;
    assert_eq!(json_hook.bodies().len(), 4, "four attempts");
    assert_eq!(
        slack_hook.bodies().len(),
        1,
        "the other receiver is unaffected"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics
            .contains(r#"flotilla_alert_notifications_total{notifier="json",outcome="failed"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"flotilla_alert_firing{rule="backlog"} 1"#));
    server.stop().await;
}

/// A receiver that cannot be reached: the transport error is recorded without the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_receiver_is_recorded_without_its_url() {
    // A port nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/T0P-SECRET-PATH", closed.local_addr().unwrap());
    drop(closed);
    let settings = rule_settings(&url, &url, &url);
    let server = TestServer::start(Backend::Sqlite, settings).await;
    for _ in 0..3 {
        server.submit(&SubmitTask::new("parked", json!({}))).await;
    }
    eventually(
        "the three failures are in the history",
        Duration::from_secs(10),
        || async {
            history(&server)
                .await
                .iter()
                .filter(|m| m.contains(") failed after 4 attempts: "))
                .count()
                == 3
        },
    )
    .await;
    let messages = history(&server).await;
    assert!(
        messages
            .iter()
            .any(|m| m
                .starts_with("notification of alert backlog (firing) to webhook #3 (127.0.0.1)")),
        "{messages:?}"
    );
    assert_url_appears_nowhere(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_mode_sheds_low_priority_work_until_the_alert_resolves() {
    let settings = Settings::default()
        .set("alerting.interval_ms", 100)
        .set("alerting.default_rules", false)
        .raw(
            "[[alerts]]\nname = \"overload\"\nsignal = \"queue_length\"\nagent_type = \"parked\"\n\
             comparison = \">=\"\nthreshold = 3\nfor = \"0s\"\nseverity = \"critical\"\n\
             actions = [\"emergency_mode\"]\n",
        )
        .pool("parked")
        .pool("other");
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(server.submit(&SubmitTask::new("parked", json!({}))).await);
    }
    let submit = |priority: i32| {
        server
            .http
            .post(server.url("/v1/tasks"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"agent_type": "parked", "input": {}, "priority": priority}))
            .send()
    };
    // Wait through the API, not by submitting: an accepted probe would lengthen the queue.
    // (The switch's event is recorded after the switch.)
    eventually(
        "emergency mode is switched on",
        Duration::from_secs(5),
        || async {
            let h = history(&server).await;
            h.iter()
                .any(|m| m.starts_with("emergency mode on: alert overload [parked] fired"))
        },
    )
    .await;
    assert_eq!(submit(1).await.unwrap().status(), 503);
    let shed = submit(4).await.unwrap();
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "60");
    let body: Value = shed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "emergency_mode", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alert overload [parked] is firing"),
        "{body}"
    );
    // The emergency is the agent type's that alerted: another type's work is not shed.
    let elsewhere = server
        .http
        .post(server.url("/v1/tasks"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"agent_type": "other", "input": {}, "priority": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 202, "another type is not shed");
    let urgent = submit(5).await.unwrap();
    assert_eq!(
        urgent.status(),
        202,
        "priority 5 and above still go through"
    );
    let urgent: Value = urgent.json().await.unwrap();

    for task in &tasks {
        server.client.cancel_task(task.id).await.unwrap();
    }
    server
        .client
        .cancel_task(urgent["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    eventually("emergency mode is off", Duration::from_secs(5), || async {
        submit(1).await.unwrap().status() == 202
    })
    .await;
    eventually(
        "both switches are in the history",
        Duration::from_secs(5),
        || async {
            let h = history(&server).await;
            h.iter()
                .any(|m| m.starts_with("emergency mode on: alert overload [parked] fired"))
                && h.iter()
                    .any(|m| m == "emergency mode off: alert overload [parked] resolved")
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_mutes_actions_but_not_the_history() {
    let (json_hook, json_url) = Receiver::start().await;
    let (slack_hook, slack_url) = Receiver::start().await;
    let (pagerduty, pagerduty_url) = Receiver::start().await;
    let settings = rule_settings(&json_url, &slack_url, &pagerduty_url);
    let server = TestServer::start(Backend::Sqlite, settings).await;
    // Unknown rules and out-of-range durations are refused, naming the field.
    let bad = server
        .http
        .post(server.url("/v1/alerts/silences"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"rule": "nope", "duration_s": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let bad = server
        .http
        .post(server.url("/v1/alerts/silences"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"rule": "backlog", "duration_s": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // A silence names a value of the rule's own dimension only.
    let bad = server
        .http
        .post(server.url("/v1/alerts/silences"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"rule": "backlog", "model": "gpt-4o", "duration_s": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["field"], "model", "{body}");
    let silence = server
        .client
        .create_silence(&flotilla_core::wire::NewSilence {
            rule: "backlog".to_owned(),
            agent_type: Some("parked".to_owned()),
            model: None,
            tenant: None,
            duration_s: 3600,
            comment: "maintenance".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(
        server.client.list_silences().await.unwrap().silences,
        std::slice::from_ref(&silence)
    );

    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(server.submit(&SubmitTask::new("parked", json!({}))).await);
    }
    eventually(
        "the silenced firing is in the history",
        Duration::from_secs(5),
        || async {
            history(&server).await.iter().any(|m| {
                m.starts_with("alert backlog [parked] firing:") && m.contains("; silenced until ")
            })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(json_hook.bodies().is_empty(), "{:?}", json_hook.bodies());
    assert!(slack_hook.bodies().is_empty());
    assert!(pagerduty.bodies().is_empty());
    let scale = server
        .client
        .list_events(&[("kind", "scale".to_owned())])
        .await
        .unwrap()
        .events;
    assert!(
        !scale.iter().any(|e| e.message.contains("alert backlog")),
        "no scale-up while silenced: {scale:?}"
    );

    // Unsilenced: the resolution is notified again.
    server.client.delete_silence(silence.id).await.unwrap();
    assert!(
        server
            .client
            .list_silences()
            .await
            .unwrap()
            .silences
            .is_empty()
    );
    for task in &tasks {
        server.client.cancel_task(task.id).await.unwrap();
    }
    eventually(
        "the resolution is notified",
        Duration::from_secs(5),
        || async { json_hook.bodies().iter().any(|b| b["status"] == "resolved") },
    )
    .await;
    server.stop().await;
}

/// A real SMTP server (Python's aiosmtpd) that offers STARTTLS with a certificate made for the
/// test and stores what it receives in a maildir; killed when dropped.
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    maildir: tempfile::TempDir,
    /// The CA that signed the server's certificate.
    cert: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpServer {
    fn start() -> SmtpServer {
        let python = std::env::var("FLOTILLA_TEST_PYTHON").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/ci-venv/bin/python"
            )
            .to_owned()
        });
        let has_aiosmtpd = std::process::Command::new(&python)
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            has_aiosmtpd,
            "{python} cannot import aiosmtpd; .ci/run installs it (pip install aiosmtpd into target/ci-venv)"
        );
        let dir = tempfile::tempdir().unwrap();
        // A CA, and a server certificate for 127.0.0.1 signed by it (webpki refuses a CA
        // certificate used as the server's own).
        let path = |name: &str| dir.path().join(name);
        let openssl = |args: &[&str]| {
            let ok = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "openssl {args:?} failed");
        };
        std::fs::write(
            path("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=flotilla-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "cert.pem",
            "-extfile",
            "leaf.ext",
        ]);
        let cert = path("ca.pem");
        let key = path("key.pem");
        let leaf = path("cert.pem");
        let maildir = tempfile::tempdir().unwrap();
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir(maildir.path().join(sub)).unwrap();
        }
        let port = flotilla_testkit::free_port().unwrap();
        let child = std::process::Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg("--tlscert")
            .arg(&leaf)
            .arg("--tlskey")
            .arg(&key)
            .arg(maildir.path())
            .spawn()
            .unwrap();
        let server = SmtpServer {
            child,
            port,
            maildir,
            cert,
            _dir: dir,
        };
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "aiosmtpd did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.path().join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_mailed_over_starttls() {
    let smtp = SmtpServer::start();
    let settings = Settings::default()
        .set("alerting.interval_ms", 100)
        .set("alerting.default_rules", false)
        .raw(&format!(
            "[[alerting.emails]]\nserver = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\n\
             from = \"flotilla@example.com\"\nto = [\"oncall@example.com\", \"team@example.com\"]\n\
             ca_file = {:?}\n\
             [[alerts]]\nname = \"backlog\"\nsignal = \"queue_length\"\nagent_type = \"parked\"\n\
             comparison = \">\"\nthreshold = 2\nfor = \"0s\"\nseverity = \"critical\"\n",
            smtp.port,
            smtp.cert.display().to_string()
        ))
        .pool("parked");
    let server = TestServer::start(Backend::Sqlite, settings).await;
    for _ in 0..3 {
        server.submit(&SubmitTask::new("parked", json!({}))).await;
    }
    eventually("the alert is mailed", Duration::from_secs(10), || async {
        !smtp.messages().is_empty()
    })
    .await;
    let mail = smtp.messages().remove(0);
    assert!(
        mail.contains("Subject: [FIRING] critical backlog (parked)"),
        "{mail}"
    );
    assert!(
        mail.contains("oncall@example.com") && mail.contains("team@example.com"),
        "{mail}"
    );
    assert!(mail.contains("Value: queue_length = 3.000"), "{mail}");
    assert!(mail.contains("Threshold: > 2"), "{mail}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(
            r#"flotilla_alert_notifications_total{notifier="email",outcome="delivered"} 1"#
        ),
        "{metrics}"
    );
    server.stop().await;
}

/// The classic token rule's action: the tenant that used the most tokens is held to
/// `alerting.rate_limit` while the alert fires; other tenants keep their rates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_the_heaviest_tenant_while_its_token_alert_fires() {
    use flotilla_core::auth::Role;
    use flotilla_core::id::TenantId;
    use flotilla_testkit::{Behaviour, ScriptedAgent};
    let settings = Settings::default()
        .set("alerting.interval_ms", 100)
        .set("alerting.default_rules", false)
        .set("alerting.rate_limit", "2/m")
        .raw(
            "[[alerts]]\nname = \"tokens\"\nsignal = \"hourly_tokens\"\ncomparison = \">\"\n\
             threshold = 100\nfor = \"0s\"\nseverity = \"critical\"\nactions = [\"rate_limit\"]\n",
        )
        .pool("metered");
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    server.register(&agent, "metered", 4).await;
    let heavy = flotilla_core::tenant::Tenant {
        id: TenantId(uuid::Uuid::now_v7()),
        name: "heavy".into(),
        created_at: chrono::Utc::now(),
        rate_limit: None,
    };
    server.store.create_tenant(&heavy).await.unwrap();
    let heavy_key = server.create_key(Role::Submitter, heavy.id).await;
    // The default tenant's agent reports a million tokens: an agent's report is its own say-so
    // and never drives a tenant's signal. The heavy tenant's model calls, metered by the
    // gateway, do (ten calls of the simulated gpt-4o: more than 100 tokens).
    let usage = |input, output| json!({"report_usage": [{"model": "m", "input_tokens": input, "output_tokens": output}]});
    let light = server
        .submit(&SubmitTask {
            agent_type: "metered".into(),
            input: usage(500_000, 500_000),
            ..serde_json::from_value(json!({"agent_type": "metered", "input": {}})).unwrap()
        })
        .await;
    let done = server.finish(light.id).await;
    assert_eq!(
        done.status,
        flotilla_core::task::TaskStatus::Succeeded,
        "{done:?}"
    );
    for _ in 0..10 {
        let status = call_model(&server, &heavy_key).await;
        assert!(status == 200 || status == 429, "{status}");
    }

    let limited = format!("tenant {} limited to 2/m", heavy.id);
    eventually(
        "the heavy tenant is limited",
        Duration::from_secs(10),
        || async { history(&server).await.iter().any(|m| m.contains(&limited)) },
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = server
            .http
            .get(server.url("/v1/tasks"))
            .bearer_auth(&heavy_key)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|&&s| s == 200).count() <= 2,
        "{statuses:?}"
    );
    // The light tenant is not affected.
    for _ in 0..10 {
        assert!(server.client.list_pools().await.is_ok());
    }
    server.stop().await;
}

/// A tenant of its own with a submitter key (which may call models).
async fn tenant(server: &TestServer, name: &str) -> (flotilla_core::id::TenantId, String) {
    use flotilla_core::auth::Role;
    let tenant = flotilla_core::tenant::Tenant {
        id: flotilla_core::id::TenantId(uuid::Uuid::now_v7()),
        name: name.into(),
        created_at: chrono::Utc::now(),
        rate_limit: None,
    };
    server.store.create_tenant(&tenant).await.unwrap();
    let key = server.create_key(Role::Submitter, tenant.id).await;
    (tenant.id, key)
}

/// One call of the simulated `gpt-4o` through the gateway; its status.
async fn call_model(server: &TestServer, key: &str) -> u16 {
    server
        .http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Statuses of four quick API requests with `key`.
async fn statuses(server: &TestServer, key: &str) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = server
            .http
            .get(server.url("/v1/tasks"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

/// A rule by tenant over tokens metered by the gateway fires for the tenant that exceeded it,
/// and its `rate_limit` holds that tenant, not the other; a rule by model fires for the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_rule_fires_for_the_tenant_that_exceeds_it_and_limits_only_that_one() {
    use flotilla_core::alert::Dimension;
    use flotilla_core::id::TenantId;
    let settings = Settings::default()
        .set("alerting.interval_ms", 100)
        .set("alerting.default_rules", false)
        .set("alerting.rate_limit", "2/m")
        .raw(
            "[[alerts]]\nname = \"tenant_tokens\"\nsignal = \"hourly_tokens\"\nby = \"tenant\"\n\
             comparison = \">\"\nthreshold = 150\nfor = \"0s\"\nseverity = \"critical\"\n\
             actions = [\"rate_limit\"]\n\
             [[alerts]]\nname = \"model_tokens\"\nsignal = \"hourly_tokens\"\nby = \"model\"\n\
             comparison = \">\"\nthreshold = 150\nfor = \"0s\"\nseverity = \"info\"\n",
        );
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let (heavy, heavy_key) = tenant(&server, "heavy").await;
    // The default tenant (the admin's) makes one call: 16-47 output tokens and a few input
    // tokens, under the threshold. The heavy tenant makes ten: more than 160.
    assert_eq!(call_model(&server, ADMIN_KEY).await, 200);
    for _ in 0..10 {
        let status = call_model(&server, &heavy_key).await;
        // Once the alert fires, the heavy tenant's calls are limited too.
        assert!(status == 200 || status == 429, "{status}");
    }

    let limited = format!(
        "tenant {heavy} limited to 2/m: alert tenant_tokens [tenant {heavy}] fired (hourly_tokens "
    );
    eventually(
        "the heavy tenant is limited",
        Duration::from_secs(10),
        || async {
            history(&server)
                .await
                .iter()
                .any(|m| m.starts_with(&limited))
        },
    )
    .await;
    let alerts = server.client.list_alerts().await.unwrap().alerts;
    let tenant_alerts: Vec<_> = alerts
        .iter()
        .filter(|a| a.rule == "tenant_tokens")
        .collect();
    assert_eq!(tenant_alerts.len(), 1, "{alerts:?}");
    let alert = tenant_alerts[0];
    assert_eq!(
        (alert.by, alert.tenant, alert.state.as_str()),
        (Dimension::Tenant, Some(heavy), "firing")
    );
    assert!(alert.value > 150.0 && alert.agent_type.is_none() && alert.model.is_none());
    assert!(
        alerts.iter().any(|a| a.rule == "model_tokens"
            && a.model.as_deref() == Some("gpt-4o")
            && a.tenant.is_none()),
        "{alerts:?}"
    );
    // The alert's history entry is about the tenant.
    let events = server.client.alert_history(&[]).await.unwrap().events;
    let fired = events
        .iter()
        .find(|e| {
            e.message
                .starts_with(&format!("alert tenant_tokens [tenant {heavy}] firing"))
        })
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(fired.agent_type, heavy.to_string());
    assert!(
        !events
            .iter()
            .any(|e| e.message.contains(&TenantId::DEFAULT.to_string())),
        "nothing fires for the light tenant: {events:?}"
    );

    let statuses = statuses(&server, &heavy_key).await;
    assert!(statuses.contains(&429), "{statuses:?}");
    // The OpenAPI document describes the new fields, and every reference resolves.
    let openapi: Value = server
        .http
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &openapi["components"]["schemas"];
    let properties = &schemas["ActiveAlert"]["properties"];
    for field in ["by", "agent_type", "model", "tenant"] {
        assert!(properties[field].is_object(), "{field}: {properties}");
    }
    assert!(schemas["Silence"]["properties"]["tenant"].is_object());
    let text = openapi.to_string();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(schemas[name].is_object(), "unresolved reference {name}");
    }
    // The light tenant is not affected.
    for _ in 0..10 {
        assert!(server.client.list_pools().await.is_ok());
    }
    server.stop().await;
}

/// A rule on `budget_utilisation` fires for the tenant whose spend crosses the threshold (naming
/// the budget), limits it while firing, and resolves (restoring the rate) once the budget is
/// raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_rule_fires_when_a_tenants_spend_crosses_it_and_resolves_when_raised() {
    use flotilla_core::budget::{Budget, Enforcement, Period};
    let (hook, url) = Receiver::start().await;
    let settings = Settings::default()
        .set("alerting.interval_ms", 100)
        .set("alerting.default_rules", false)
        .set("alerting.rate_limit", "2/m")
        .raw(&format!(
            "[[alerting.webhooks]]\nurl = \"{url}\"\nformat = \"json\"\n\
             [[alerts]]\nname = \"budget_high\"\nsignal = \"budget_utilisation\"\n\
             comparison = \">=\"\nthreshold = 0.5\nfor = \"0s\"\nseverity = \"warning\"\n\
             actions = [\"notify\", \"rate_limit\"]\n"
        ));
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let (spender, key) = tenant(&server, "spender").await;
    let budget = |limit: &str| Budget {
        tenant_id: spender,
        period: Period::Monthly,
        limit: limit.parse().unwrap(),
        thresholds: vec![100],
        enforcement: Enforcement::AlertOnly,
        updated_at: chrono::Utc::now(),
    };
    // A simulated gpt-4o call costs a few hundred-thousandths of a dollar: a budget of $0.001
    // is half spent within a few dozen calls.
    server.store.put_budget(&budget("0.001")).await.unwrap();
    let firing = |server: &TestServer| {
        let client = server.client.clone();
        async move {
            client
                .list_alerts()
                .await
                .unwrap()
                .alerts
                .into_iter()
                .find(|a| a.rule == "budget_high" && a.state == "firing")
        }
    };
    let mut alert = None;
    for _ in 0..200 {
        if call_model(&server, &key).await == 429 {
            break;
        }
        alert = firing(&server).await;
        if alert.is_some() {
            break;
        }
    }
    let alert = match alert {
        Some(a) => a,
        None => {
            eventually("the budget alert fires", Duration::from_secs(5), || async {
                firing(&server).await.is_some()
            })
            .await;
            firing(&server).await.unwrap()
        }
    };
    assert_eq!(alert.tenant, Some(spender), "{alert:?}");
    assert!(alert.value >= 0.5, "{alert:?}");
    let fired = format!("alert budget_high [tenant {spender}] firing: budget_utilisation ");
    eventually(
        "the firing names the budget",
        Duration::from_secs(5),
        || async {
            history(&server)
                .await
                .iter()
                .any(|m| m.starts_with(&fired) && m.contains(" (monthly budget) >= 0.5"))
        },
    )
    .await;
    eventually(
        "the notification names the tenant",
        Duration::from_secs(5),
        || async {
            hook.bodies().iter().any(|b| {
                b["rule"] == "budget_high"
                    && b["status"] == "firing"
                    && b["tenant"] == spender.to_string()
            })
        },
    )
    .await;
    let limited =
        format!("tenant {spender} limited to 2/m: alert budget_high [tenant {spender}] fired");
    eventually("the tenant is limited", Duration::from_secs(5), || async {
        history(&server)
            .await
            .iter()
            .any(|m| m.starts_with(&limited))
    })
    .await;
    assert!(statuses(&server, &key).await.contains(&429));

    // Raised: the utilisation falls under the threshold, the alert resolves, the rate returns.
    server.store.put_budget(&budget("100")).await.unwrap();
    eventually(
        "the budget alert resolves",
        Duration::from_secs(5),
        || async { server.client.list_alerts().await.unwrap().alerts.is_empty() },
    )
    .await;
    let restored = format!(
        "tenant {spender} rate limit restored: alert budget_high [tenant {spender}] resolved"
    );
    eventually("the rate is restored", Duration::from_secs(5), || async {
        history(&server).await.iter().any(|m| m == &restored)
    })
    .await;
    server.stop().await;
}

/// A rule by model over the gateway's calls fires for the model that fails (an upstream that
/// answers 503), not for the one that answers, and names it in the alert and the notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_error_rate_rule_fires_for_the_failing_model_only() {
    let mock = flotilla_testkit::MockProvider::start().await.unwrap();
    let (hook, url) = Receiver::start().await;
    let settings = Settings::default()
        .set("alerting.interval_ms", 100)
        .set("alerting.default_rules", false)
        .raw(&format!(
            "[providers.mock]\nbase_url = \"{}\"\napi_key = \"env:FLOTILLA_TEST_MOCK_PROVIDER_KEY\"\n\
             max_retries = 0\nretry_base_ms = 5\n\
             [[models]]\nname = \"mock-ok\"\nprovider = \"mock\"\nupstream = \"ok\"\nprices = {{ input = 1, output = 2 }}\n\
             [[models]]\nname = \"mock-down\"\nprovider = \"mock\"\nupstream = \"fail-503\"\nprices = {{ input = 1, output = 2 }}\n\
             [[alerting.webhooks]]\nurl = \"{url}\"\nformat = \"json\"\n\
             [[alerts]]\nname = \"model_errors\"\nsignal = \"error_rate\"\nby = \"model\"\n\
             comparison = \">\"\nthreshold = 0.5\nfor = \"0s\"\nseverity = \"warning\"\n",
            mock.base_url
        ));
    let server = TestServer::start(Backend::Sqlite, settings).await;
    for model in ["mock-ok", "mock-down", "mock-ok", "mock-down"] {
        let status = server
            .http
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status == 200, model == "mock-ok", "{model}: {status}");
    }
    eventually(
        "the failing model's alert fires",
        Duration::from_secs(5),
        || async {
            let alerts = server.client.list_alerts().await.unwrap().alerts;
            alerts.iter().any(|a| {
                a.model.as_deref() == Some("mock-down") && a.state == "firing" && a.value == 1.0
            })
        },
    )
    .await;
    let alerts = server.client.list_alerts().await.unwrap().alerts;
    assert_eq!(alerts.len(), 1, "only the failing model: {alerts:?}");
    eventually(
        "the notification names the model",
        Duration::from_secs(5),
        || async {
            hook.bodies().iter().any(|b| {
                b["rule"] == "model_errors"
                    && b["model"] == "mock-down"
                    && b.get("agent_type").is_none()
            })
        },
    )
    .await;
    eventually(
        "the firing is in the history",
        Duration::from_secs(5),
        || async {
            history(&server).await.iter().any(|m| {
                m.starts_with("alert model_errors [model mock-down] firing: error_rate 1.000 > 0.5")
            })
        },
    )
    .await;
    server.stop().await;
}

/// Two control planes on one PostgreSQL database: the engine runs on the leader only, and the
/// follower answers `GET /v1/alerts` with what the leader published on the alert board.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_answers_with_the_alerts_the_leader_published() {
    let database = support::Database::create(Backend::Postgres);
    let settings = Settings::default()
        .set("alerting.interval_ms", 100)
        .set("alerting.default_rules", false)
        .raw(
            "[[alerts]]\nname = \"backlog\"\nsignal = \"queue_length\"\nagent_type = \"parked\"\n\
             comparison = \">\"\nthreshold = 0\nfor = \"0s\"\nseverity = \"warning\"\n\
             actions = [\"notify\"]\n",
        )
        .pool("parked");
    let first = TestServer::start_on(database.location.open().await, settings.clone()).await;
    eventually(
        "the first control plane leads",
        Duration::from_secs(5),
        || async {
            first
                .client
                .system()
                .await
                .ok()
                .and_then(|s| s.replica)
                .is_some_and(|r| r.leader)
        },
    )
    .await;
    let follower = TestServer::start_on(database.location.open().await, settings).await;
    let replica = follower.client.system().await.unwrap().replica.unwrap();
    assert!(!replica.leader, "{replica:?}");

    first.submit(&SubmitTask::new("parked", json!({}))).await;
    eventually(
        "the follower shows the leader's firing alert",
        Duration::from_secs(5),
        || async {
            let alerts = follower.client.list_alerts().await.unwrap().alerts;
            alerts
                .iter()
                .any(|a| a.rule == "backlog" && a.state == "firing" && a.value == 1.0)
        },
    )
    .await;
    follower.stop().await;
    first.stop().await;
    database.remove().await;
}

/// A receiver that answers with a redirect is not followed: the signed body goes nowhere else,
/// and the delivery fails with the 3xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirecting_receiver_is_not_followed() {
    let (elsewhere, elsewhere_url) = Receiver::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirecting = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new().fallback(move || {
        let to = elsewhere_url.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [("location", to)]) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (_slack, slack_url) = Receiver::start().await;
    let (_pagerduty, pagerduty_url) = Receiver::start().await;
    let settings = rule_settings(&redirecting, &slack_url, &pagerduty_url);
    let server = TestServer::start(Backend::Sqlite, settings).await;
    for _ in 0..3 {
        server.submit(&SubmitTask::new("parked", json!({}))).await;
    }
    eventually(
        "the redirected delivery failed",
        Duration::from_secs(10),
        || async {
            history(&server)
                .await
                .iter()
                .any(|m| m.ends_with("failed after 4 attempts: HTTP 307"))
        },
    )
    .await;
    assert!(elsewhere.bodies().is_empty(), "{:?}", elsewhere.bodies());
    server.stop().await;
}
