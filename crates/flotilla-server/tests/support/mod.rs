//! The harness of the control plane's component tests: a real control plane started in-process on
//! `127.0.0.1:0`, spoken to over real HTTP, on a fresh SQLite file or a fresh PostgreSQL schema,
//! with a known admin key and fast scheduler settings.
//!
//! Each test binary uses part of this module, hence `dead_code` is allowed here.
#![allow(dead_code, unused_macros)]

use flotilla_client::Client;
use flotilla_core::auth::Role;
use flotilla_core::config::{self, Config};
use flotilla_core::id::{AgentId, TaskId, TenantId};
use flotilla_core::task::{Task, TaskStatus};
use flotilla_core::wire::{Heartbeat, RegisterAgent, SubmitTask};
use flotilla_server::{RunningServer, StartOptions};
use flotilla_store::{DynStore, PostgresStore};
use flotilla_testkit::ScriptedAgent;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub mod raw_agent;

/// The bootstrap admin key of every test server.
pub const ADMIN_KEY: &str = "flt_testadmin_k3yOfTheComponentTests0123456789abcdefghijk";

/// Generates one test per backend for each named `async fn(Backend)`: `sqlite::<name>` and
/// `postgres::<name>`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// Which store a test server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where a fresh database lives; cheap to clone, so several servers (or a server in another
/// runtime) can open it.
#[derive(Clone, Debug)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres { schema: String },
}

impl Location {
    /// Opens a new connection pool on the database and applies the migrations.
    pub async fn open(&self) -> DynStore {
        match self {
            Location::Sqlite(path) => {
                flotilla_store::open(&config::Database::Sqlite(path.clone()), 4)
                    .await
                    .unwrap()
            }
            Location::Postgres { schema } => {
                let url = flotilla_testkit::postgres_url();
                let store = PostgresStore::connect_in_schema(&url, schema, 4)
                    .await
                    .unwrap();
                let store: DynStore = Arc::new(store);
                store.migrate().await.unwrap();
                store
            }
        }
    }
}

/// A fresh, empty database, removed (best effort) by [`Database::remove`].
pub struct Database {
    pub location: Location,
    _dir: Option<TempDir>,
}

impl Location {
    /// Names this database in the configuration, so that what lives beside it (the vault's
    /// generated master key) goes to the test's temporary directory, not the working directory.
    pub fn configure(&self, settings: Settings) -> Settings {
        match self {
            Location::Sqlite(path) => {
                settings.set("database.url", format!("sqlite://{}", path.display()))
            }
            Location::Postgres { .. } => settings,
        }
    }
}

impl Database {
    pub fn create(backend: Backend) -> Database {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                Database {
                    location: Location::Sqlite(dir.path().join("flotilla.db")),
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                Database {
                    location: Location::Postgres { schema },
                    _dir: None,
                }
            }
        }
    }

    /// Drops the PostgreSQL schema (the SQLite directory goes with `self`). A schema left
    /// behind by a failed test is harmless.
    pub async fn remove(self) {
        let Location::Postgres { schema } = &self.location else {
            return;
        };
        let _ = PostgresStore::drop_schema(&flotilla_testkit::postgres_url(), schema).await;
    }
}

/// The configuration of a test server: fast timers, a port chosen by the OS, plus what the test
/// adds (pools, overrides).
#[derive(Clone, Debug)]
pub struct Settings {
    text: String,
    overrides: Vec<config::Override>,
}

impl Default for Settings {
    fn default() -> Self {
        // Heartbeats do not expire by default: ScriptedAgent does not send them. Tests of
        // heartbeats shorten the timeout.
        let text = r#"
[server]
listen = "127.0.0.1:0"
max_wait_s = 30

[scheduler]
lease_ttl_ms = 1000
retry_base_ms = 20
retry_max_ms = 100
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 60000
default_timeout_ms = 2000
default_max_attempts = 3
"#;
        Settings {
            text: text.to_owned(),
            overrides: Vec::new(),
        }
    }
}

impl Settings {
    /// Adds a pool (agent type) with default settings.
    pub fn pool(mut self, name: &str) -> Self {
        self.text.push_str(&format!(
            "\n[[pools]]\nname = \"{name}\"\nprovisioner = \"static\"\n"
        ));
        self
    }

    /// Appends raw TOML, e.g. settings of the pool added last: `.pool("x").raw("strategy = …")`.
    pub fn raw(mut self, text: &str) -> Self {
        self.text.push_str(text);
        self.text.push('\n');
        self
    }

    /// Overrides one setting, e.g. `set("server.max_body_bytes", 1024)`.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.overrides.push((key.to_owned(), value.into()));
        self
    }

    pub fn build(&self) -> Config {
        self.try_build().unwrap()
    }

    pub fn try_build(&self) -> Result<Config, config::ConfigError> {
        config::load(Some(("test", &self.text)), &[], &self.overrides)
    }
}

/// A running control plane and clients of it.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Typed client with the admin key.
    pub client: Client,
    /// Raw HTTP client without credentials, for requests the typed client cannot make.
    pub http: reqwest::Client,
    /// The server's store, for setting up what the API cannot (keys of other roles and tenants).
    pub store: DynStore,
    pub config: Config,
    running: RunningServer,
    database: Option<Database>,
}

impl TestServer {
    /// Starts a server on a fresh database of `backend`.
    pub async fn start(backend: Backend, settings: Settings) -> TestServer {
        let database = Database::create(backend);
        let store = database.location.open().await;
        let settings = database.location.configure(settings);
        let mut server = TestServer::start_on(store, settings).await;
        server.database = Some(database);
        server
    }

    /// Starts a server on an existing (migrated) store, which the caller removes.
    pub async fn start_on(store: DynStore, settings: Settings) -> TestServer {
        let config = settings.build();
        let options = StartOptions {
            bootstrap_key: Some(ADMIN_KEY.to_owned()),
            ..StartOptions::default()
        };
        let running = flotilla_server::start(config.clone(), store.clone(), options)
            .await
            .unwrap();
        TestServer::attach(running, store, config)
    }

    /// Wraps a server started elsewhere (e.g. in another runtime).
    pub fn attach(running: RunningServer, store: DynStore, config: Config) -> TestServer {
        let url = format!("http://{}", running.addr);
        let client = Client::new(&url, Some(ADMIN_KEY.to_owned())).unwrap();
        TestServer {
            url,
            client,
            http: reqwest::Client::new(),
            store,
            config,
            running,
            database: None,
        }
    }

    /// This control plane's view of the leadership (docs/design.md §9).
    pub fn leadership(&self) -> &flotilla_server::leadership::Leadership {
        &self.running.state().leadership
    }

    /// The PostgreSQL schema the server's tables live in (`None` on SQLite).
    pub fn postgres_schema(&self) -> Option<&str> {
        match self.database.as_ref().map(|d| &d.location) {
            Some(Location::Postgres { schema }) => Some(schema),
            _ => None,
        }
    }

    /// Stops the server in order and removes its database.
    pub async fn stop(self) {
        self.running.stop().await;
        if let Some(database) = self.database {
            database.remove().await;
        }
    }

    /// The full URL of a path, e.g. `url("/v1/tasks")`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Registers a scripted agent as an instance of `agent_type`.
    pub async fn register(
        &self,
        agent: &ScriptedAgent,
        agent_type: &str,
        capacity: u32,
    ) -> AgentId {
        self.register_url(&agent.url(), agent_type, capacity).await
    }

    /// Registers an instance at any URL.
    pub async fn register_url(&self, url: &str, agent_type: &str, capacity: u32) -> AgentId {
        let body = RegisterAgent {
            agent_type: agent_type.to_owned(),
            url: url.to_owned(),
            capacity,
            weight: None,
            metadata: None,
            version: None,
        };
        self.client.register_agent(&body).await.unwrap().id
    }

    /// Heartbeats `id` every 100 ms until the returned guard is dropped.
    pub fn keep_alive(&self, id: AgentId) -> KeepAlive {
        let client = self.client.clone();
        KeepAlive(tokio::spawn(async move {
            loop {
                let _ = client
                    .heartbeat(
                        id,
                        &Heartbeat {
                            load: 0,
                            status: None,
                        },
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
    }

    /// `DELETE /v1/agents/{id}` as the admin: the status and the JSON body.
    pub async fn deregister(&self, id: AgentId) -> (u16, serde_json::Value) {
        let response = self
            .http
            .delete(self.url(&format!("/v1/agents/{id}")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// `/metrics` as the admin sees it (classic text format).
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Submits a task through the typed client.
    pub async fn submit(&self, task: &SubmitTask) -> Task {
        self.client.submit_task(task).await.unwrap()
    }

    /// The task's current status.
    pub async fn status(&self, id: TaskId) -> TaskStatus {
        self.client.get_task(id, None).await.unwrap().status
    }

    /// Long-polls until the task (of the default tenant) is terminal; panics after 20 s.
    pub async fn finish(&self, id: TaskId) -> Task {
        TestServer::finish_with(&self.client, id).await
    }

    /// `method path` with `key` and an optional JSON body: the status and the JSON answer
    /// (`null` when there is none).
    pub async fn send(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    /// Long-polls a task with `client` (of the task's tenant) until it is terminal; panics after
    /// 20 s.
    pub async fn finish_with(client: &Client, id: TaskId) -> Task {
        let started = Instant::now();
        loop {
            let task = client
                .get_task(id, Some(Duration::from_secs(5)))
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

    /// Creates an API key with `role` in `tenant` and returns its text.
    pub async fn create_key(&self, role: Role, tenant: TenantId) -> String {
        let (text, record) = flotilla_server::auth::bootstrap::new_key(
            tenant,
            role,
            &format!("test {role}"),
            chrono::Utc::now(),
        );
        self.store.insert_api_key(&record).await.unwrap();
        text
    }

    /// Creates a tenant (as the admin) and returns its id.
    pub async fn create_tenant(&self, name: &str) -> TenantId {
        self.client
            .create_tenant(&flotilla_core::tenant::NewTenant {
                name: name.to_owned(),
                rate_limit: None,
            })
            .await
            .unwrap()
            .id
    }

    /// A typed client with another key.
    pub fn client_with(&self, key: &str) -> Client {
        Client::new(&self.url, Some(key.to_owned())).unwrap()
    }
}

/// Stops a [`TestServer::keep_alive`] loop when dropped.
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls `check` every 20 ms until it returns true; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A submission of `input` to `agent_type` with defaults for everything else.
pub fn task(agent_type: &str, input: serde_json::Value) -> SubmitTask {
    SubmitTask::new(agent_type, input)
}
