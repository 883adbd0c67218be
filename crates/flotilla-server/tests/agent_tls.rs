//! Mutual TLS between the control plane and agents (`[agents_tls]`, the SDK's `ServerTls` and
//! `control_plane_tls`), with certificates made in the test (rcgen):
//! - a task runs end to end: an SDK agent registers and heartbeats over HTTPS with its client
//!   certificate, and the control plane dispatches to its `https` URL presenting its own;
//! - an agent that requires client certificates refuses a caller without one;
//! - a control plane with `agents_tls.ca_file` refuses an agent whose certificate another CA
//!   signed: every attempt fails with an error naming TLS, and the task fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_agent::{AgentSecurity, Latency, RunningAgent, RuntimeConfig, ServerTls};
use flotilla_client::{Client, TlsOptions};
use flotilla_core::id::TaskId;
use flotilla_core::task::{Task, TaskStatus};
use flotilla_core::wire::SubmitTask;
use flotilla_testkit::pki::TestCa;
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{ADMIN_KEY, Backend, Settings, TestServer};
use tokio_util::sync::CancellationToken;

const TYPE: &str = "tls_echo";

/// A CA and what it signs, as files (the testkit's, with this file's panics on failure).
struct Ca(TestCa);

impl Ca {
    fn new(name: &str) -> Ca {
        Ca(TestCa::new(name).unwrap())
    }

    /// A leaf certificate for `names` with `usage`, written to `<dir>/<file>.pem` and
    /// `<dir>/<file>.key`.
    fn issue(&self, dir: &Path, file: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pem {
        let (cert, key) = self.0.issue_files(dir, file, names, usage).unwrap();
        Pem { cert, key }
    }

    fn write(&self, dir: &Path, file: &str) -> PathBuf {
        self.0.write_cert(dir, file).unwrap()
    }
}

/// A certificate and its key, as files.
struct Pem {
    cert: PathBuf,
    key: PathBuf,
}

/// The files of one test: a CA that signs everything but the stranger's certificate.
struct Pki {
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    /// The control plane's server certificate.
    control_plane: Pem,
    /// The control plane's client certificate, presented to agents.
    control_plane_client: Pem,
    /// An agent's server certificate.
    agent: Pem,
    /// An agent's client certificate, presented to the control plane.
    agent_client: Pem,
    /// A server certificate for 127.0.0.1 that another CA signed.
    stranger: Pem,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let ca = Ca::new("flotilla test ca");
        let server = ExtendedKeyUsagePurpose::ServerAuth;
        let client = ExtendedKeyUsagePurpose::ClientAuth;
        Pki {
            ca_file: ca.write(path, "ca.pem"),
            control_plane: ca.issue(path, "cp", &["127.0.0.1", "localhost"], server.clone()),
            control_plane_client: ca.issue(path, "cp-client", &["control-plane"], client.clone()),
            agent: ca.issue(path, "agent", &["127.0.0.1"], server.clone()),
            agent_client: ca.issue(path, "agent-client", &["agent-1"], client),
            stranger: Ca::new("stranger").issue(path, "stranger", &["127.0.0.1"], server),
            _dir: dir,
        }
    }

    /// A control plane serving HTTPS, requiring client certificates, and calling agents over
    /// mutual TLS.
    fn settings(&self) -> Settings {
        Settings::default()
            .raw(&format!(
                "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n\
                 [agents_tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
                self.control_plane.cert,
                self.control_plane.key,
                self.ca_file,
                self.ca_file,
                self.control_plane_client.cert,
                self.control_plane_client.key,
            ))
            // Failed dispatches are the subject here: no health checks or ejection to race them.
            .pool(TYPE)
            .raw("[pools.health]\ninterval_ms = 0\n[pools.outlier]\nenabled = false\n")
    }

    /// The agent's side towards the control plane: trust the CA, present its certificate.
    fn agent_client_tls(&self) -> TlsOptions {
        TlsOptions::with_ca_file(&self.ca_file)
            .client_certificate(&self.agent_client.cert, &self.agent_client.key)
    }
}

/// An https URL of the server and an admin client of it (which needs a client certificate too).
fn admin(server: &TestServer, pki: &Pki) -> (String, Client) {
    let url = server.url.replace("http://", "https://");
    let client = Client::with_tls(&url, Some(ADMIN_KEY.to_owned()), &pki.agent_client_tls())
        .unwrap()
        .with_request_timeout(Duration::from_secs(10));
    (url, client)
}

async fn start_agent(
    control_plane: &str,
    key: String,
    serving: &Pem,
    pki: &Pki,
) -> (RunningAgent, CancellationToken) {
    let config = RuntimeConfig {
        agent_type: TYPE.to_owned(),
        capacity: 4,
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise_url: None,
        control_plane: control_plane.to_owned(),
        key,
        weight: None,
        drain_timeout: Duration::from_secs(1),
        metadata: None,
        version: None,
        security: AgentSecurity {
            server_tls: Some(ServerTls {
                cert_file: serving.cert.clone(),
                key_file: serving.key.clone(),
                client_ca_file: Some(pki.ca_file.clone()),
            }),
            control_plane_tls: pki.agent_client_tls(),
            ..AgentSecurity::default()
        },
    };
    let shutdown = CancellationToken::new();
    let agent = flotilla_agent::SimulatedAgent::new(TYPE, Latency::ZERO, 0.0).unwrap();
    let running = tokio::time::timeout(
        Duration::from_secs(10),
        flotilla_agent::start(agent, config, shutdown.clone()),
    )
    .await
    .expect("the agent registered within 10 s")
    .unwrap();
    (running, shutdown)
}

/// An agent key, from the admin over the API.
async fn agent_key(server: &TestServer) -> String {
    let tenant = flotilla_core::id::TenantId::DEFAULT;
    server
        .create_key(flotilla_core::auth::Role::Agent, tenant)
        .await
}

/// Long-polls until the task is terminal; panics after 20 s.
async fn finish(client: &Client, id: TaskId) -> Task {
    let started = Instant::now();
    loop {
        let task = client
            .get_task(id, Some(Duration::from_secs(2)))
            .await
            .unwrap();
        if task.status.is_terminal() {
            return task;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "task {id} not finished after 20 s: {task:?}"
        );
    }
}

/// A raw client trusting the CA, with an optional client certificate.
fn raw_client(pki: &Pki, identity: Option<&Pem>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        Some(pem) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(&pem.cert).unwrap()],
                PrivateKeyDer::from_pem_file(&pem.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .no_proxy()
        .build()
        .unwrap()
}

async fn a_task_runs_over_mutual_tls_both_ways(backend: Backend) {
    let pki = Pki::new();
    let server = TestServer::start(backend, pki.settings()).await;
    let (url, client) = admin(&server, &pki);
    let (agent, shutdown) = start_agent(&url, agent_key(&server).await, &pki.agent, &pki).await;
    assert!(agent.url.starts_with("https://127.0.0.1:"), "{}", agent.url);

    let task = client
        .submit_task(&SubmitTask::new(TYPE, json!({"over": "mtls"})))
        .await
        .unwrap();
    let done = finish(&client, task.id).await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    assert_eq!(done.agent_id, Some(agent.current_id()));

    // Heartbeats go over mutual TLS too: the instance stays registered under its first id.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(agent.current_id(), agent.id);
    let listed = client.list_agents().await.unwrap().agents;
    assert!(
        listed
            .iter()
            .any(|a| a.id == agent.id && a.url == agent.url)
    );

    // The agent refuses callers without a client certificate its CA signed, in the handshake.
    let health = format!("{}/health", agent.url);
    let with = raw_client(&pki, Some(&pki.control_plane_client));
    assert_eq!(with.get(&health).send().await.unwrap().status(), 200);
    let without = raw_client(&pki, None);
    let refused = without.get(&health).send().await;
    assert!(refused.is_err(), "{refused:?}");
    // Nor does it speak plain HTTP.
    let plain = reqwest::Client::new()
        .get(health.replace("https://", "http://"))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    shutdown.cancel();
    agent.wait().await.unwrap();
    server.stop().await;
}

async fn an_agent_signed_by_another_ca_gets_no_task(backend: Backend) {
    let pki = Pki::new();
    let server = TestServer::start(backend, pki.settings()).await;
    let (url, client) = admin(&server, &pki);
    // The agent itself trusts the control plane and registers fine; its certificate does not
    // chain to `agents_tls.ca_file`.
    let (agent, shutdown) = start_agent(&url, agent_key(&server).await, &pki.stranger, &pki).await;

    let task = client
        .submit_task(&SubmitTask {
            max_attempts: Some(2),
            ..SubmitTask::new(TYPE, json!({"n": 1}))
        })
        .await
        .unwrap();
    let done = finish(&client, task.id).await;
    assert_eq!(done.status, TaskStatus::Failed, "{done:?}");
    let error = done.error.clone().unwrap_or_default();
    assert!(error.contains("TLS"), "{error}");
    assert!(done.attempts.len() >= 2, "retried before failing: {done:?}");

    shutdown.cancel();
    agent.wait().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn unusable_agents_tls_files_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::default().raw(&format!(
        "[agents_tls]\nca_file = {:?}\n",
        dir.path().join("missing-ca.pem"),
    ));
    let database = support::Database::create(Backend::Sqlite);
    let store = database.location.open().await;
    let started = flotilla_server::start(
        settings.build(),
        store,
        flotilla_server::StartOptions::default(),
    )
    .await;
    let Err(error) = started else {
        panic!("the server started with a missing agents_tls.ca_file");
    };
    assert!(error.to_string().contains("missing-ca.pem"), "{error}");
}

on_both_backends!(
    a_task_runs_over_mutual_tls_both_ways,
    an_agent_signed_by_another_ca_gets_no_task
);
