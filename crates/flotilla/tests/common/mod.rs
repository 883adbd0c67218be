//! Shared set-up of the end-to-end tests: the binary, keys, and a fresh PostgreSQL database per
//! test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flotilla_client::Client;
use flotilla_core::id::TaskId;
use flotilla_core::task::Task;
use std::process::Command;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
/// The admin key every test server is started with.
pub const ADMIN_KEY: &str = "flt_e2eadmin_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

/// A PostgreSQL database created for one test and dropped after it.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub fn create() -> PgDatabase {
        let base = flotilla_testkit::postgres_url();
        let name = format!("flotilla_e2e_{}", uuid::Uuid::new_v4().simple());
        psql(&base, &format!("CREATE DATABASE {name}"));
        let (prefix, _) = base
            .rsplit_once('/')
            .expect("the PostgreSQL URL names a database");
        PgDatabase {
            url: format!("{prefix}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let base = flotilla_testkit::postgres_url();
        let _ = Command::new("psql")
            .args([
                &base,
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-qc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Long-polls a task until it is terminal or `within` passes; returns its last state.
pub async fn wait_terminal(client: &Client, id: TaskId, within: Duration) -> Task {
    let deadline = Instant::now() + within;
    loop {
        match client.get_task(id, Some(Duration::from_secs(5))).await {
            Ok(task) if task.status.is_terminal() => return task,
            Ok(task) if Instant::now() > deadline => return task,
            Ok(_) => {}
            Err(e) if Instant::now() > deadline => panic!("task {id} unreadable: {e}"),
            // The server may be restarting.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// How [`PrivatePostgres::stop`] shuts the server down (`pg_ctl stop -m …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Clients are disconnected and the server shuts down cleanly.
    Fast,
    /// The server quits at once, as in a crash; it recovers from its WAL at the next start.
    Immediate,
}

/// A PostgreSQL cluster of one test's own, in a temporary directory on a free port, for tests
/// that stop or restart the database: the shared one on 127.0.0.1:5432 serves every other test
/// at the same time and must never be restarted. Stopped (immediately) when dropped.
///
/// It needs PostgreSQL's server binaries (`initdb`, `pg_ctl`, `postgres`) under
/// `/usr/lib/postgresql/<version>/bin` (Debian's `postgresql` package), or in the directory
/// named by `FLOTILLA_TEST_PG_BIN`. PostgreSQL refuses to run as root, so as root they run as
/// the `postgres` user (`runuser -u postgres --`), which then owns the directory.
pub struct PrivatePostgres {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub url: String,
    pub port: u16,
    bin: std::path::PathBuf,
    /// Runs the binaries as this user when the test runs as root.
    as_user: Option<&'static str>,
    data: std::path::PathBuf,
    log: std::path::PathBuf,
    running: bool,
    // Removed after the server has stopped (in `drop`).
    dir: Option<tempfile::TempDir>,
}

impl PrivatePostgres {
    /// `initdb` a new cluster (trust authentication) and start it on a free port.
    pub fn start() -> PrivatePostgres {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("flotilla-pg-")
            .tempdir()
            .expect("a temporary directory");
        let as_user = if id(&["-u"]) == 0 {
            let (uid, gid) = (id(&["-u", "postgres"]), id(&["-g", "postgres"]));
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the cluster's directory to postgres");
            Some("postgres")
        } else {
            None
        };
        let port = flotilla_testkit::free_port().expect("a free port");
        let mut pg = PrivatePostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            bin,
            as_user,
            data: dir.path().join("data"),
            log: dir.path().join("postgres.log"),
            running: false,
            dir: Some(dir),
        };
        let data = pg.data.to_string_lossy().into_owned();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg.start_again();
        pg
    }

    /// Starts the stopped server again, on the same port with the same data.
    pub fn start_again(&mut self) {
        let socket_dir = self
            .dir
            .as_ref()
            .map(|d| d.path().to_string_lossy().into_owned())
            .unwrap_or_default();
        let options = format!(
            "-p {} -k {socket_dir} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            self.port
        );
        let (data, log) = (
            self.data.to_string_lossy().into_owned(),
            self.log.to_string_lossy().into_owned(),
        );
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-o", &options, "-l", &log, "-w", "-t", "60", "start",
            ],
        );
        self.running = true;
    }

    /// `pg_ctl stop -m fast|immediate`; waits until the server has gone.
    pub fn stop(&mut self, mode: StopMode) {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let data = self.data.to_string_lossy().into_owned();
        self.run("pg_ctl", &["-D", &data, "-m", mode, "-w", "stop"]);
        self.running = false;
    }

    /// Stops the server (`mode`) and starts it again on the same port.
    pub fn restart(&mut self, mode: StopMode) {
        self.stop(mode);
        self.start_again();
    }

    /// The server's log, for failure messages.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        match self.as_user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            // runuser keeps the working directory, which the postgres user may not read.
            .current_dir("/")
            .output()
            .unwrap_or_else(|e| panic!("{program} could not be started: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}\n--- server log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.data.to_string_lossy().into_owned();
            let _ = self
                .command("pg_ctl")
                .args(["-D", &data, "-m", "immediate", "-w", "stop"])
                .current_dir("/")
                .output();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// `id ARGS` as a number: `-u` is this process's user id, `-u postgres` that user's.
fn id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().expect("`id` runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "`id {}` gave no number: {}. As root, the `postgres` OS user (created by \
                 Debian's postgresql package) is needed, since PostgreSQL refuses to run as root.",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

/// The directory of PostgreSQL's server binaries: `FLOTILLA_TEST_PG_BIN`, or the newest
/// `/usr/lib/postgresql/<version>/bin` that has `initdb`, `pg_ctl` and `postgres`.
fn pg_bin_dir() -> std::path::PathBuf {
    let has_all = |dir: &std::path::Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os("FLOTILLA_TEST_PG_BIN") {
        let dir = std::path::PathBuf::from(dir);
        assert!(
            has_all(&dir),
            "FLOTILLA_TEST_PG_BIN={} lacks initdb, pg_ctl or postgres",
            dir.display()
        );
        return dir;
    }
    let mut found: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_all(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "this test starts a PostgreSQL server of its own and needs its binaries (initdb, \
             pg_ctl, postgres): none found under /usr/lib/postgresql/<version>/bin. Install \
             Debian's `postgresql` package, or set FLOTILLA_TEST_PG_BIN to their directory."
        )
    })
}

/// `(task id, attempt)` of every execution the agents logged, with how often each ran (see
/// `AgentProcess::executions`).
/// Asserts that the agents logged at least `tasks` executions (so the log was read) and no
/// `(task, attempt)` twice.
pub fn assert_each_attempt_ran_once(agents: &[flotilla_testkit::AgentProcess], tasks: usize) {
    let executed = agent_executions(agents);
    assert!(
        executed.len() >= tasks,
        "the agents logged {} executions for {tasks} tasks",
        executed.len()
    );
    let twice: Vec<_> = executed.into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "attempts executed twice: {twice:?}");
}

/// How many `(task, attempt)` pairs the agents logged more than once.
pub fn executed_twice(agents: &[flotilla_testkit::AgentProcess]) -> usize {
    agent_executions(agents)
        .into_values()
        .filter(|n| *n > 1)
        .count()
}

fn agent_executions(
    agents: &[flotilla_testkit::AgentProcess],
) -> std::collections::HashMap<(String, i32), usize> {
    let mut seen = std::collections::HashMap::new();
    for (run, n) in agents.iter().flat_map(|a| a.executions()) {
        *seen.entry(run).or_insert(0) += n;
    }
    seen
}

/// `flotilla serve` with the bootstrap admin key, the code_generator pool (its agents register
/// themselves), task leases of 1.5 s and quick retries; on SQLite unless told otherwise. Settings
/// given again later (`.env`) win.
pub fn code_generator_server() -> flotilla_testkit::ServerProcessBuilder {
    flotilla_testkit::ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .env("FLOTILLA_SCHEDULER__LEASE_TTL_MS", "1500")
        .env("FLOTILLA_SCHEDULER__RETRY_BASE_MS", "50")
        .arg("--config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/code_generator_pool.toml"
        ))
}

/// Starts one of several `flotilla serve` replicas on the PostgreSQL database at `url`, with the
/// code_generator pool, a leader lease of `lease_ms`, short task leases and retries, and the
/// master key every replica shares (task tokens and the vault derive from it).
pub async fn start_replica(url: &str, lease_ms: u64) -> flotilla_testkit::ServerProcess {
    code_generator_server()
        .env(
            "FLOTILLA_MASTER_KEY",
            "0000000000000000000000000000000000000000000000000000000000000001",
        )
        .env("FLOTILLA_DATABASE__LEADER_LEASE_MS", lease_ms.to_string())
        .args(["--database-url", url])
        .start()
        .await
        .expect("replica starts")
}

/// Waits for exactly one of the replicas (`None`: killed) to say it leads, never two at once;
/// returns its index and generation.
pub async fn one_leader(clients: &[Option<Client>], within: Duration) -> (usize, i64) {
    let deadline = Instant::now() + within;
    loop {
        let mut leading = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            let Some(client) = client else { continue };
            if let Ok(info) = client.system().await
                && let Some(r) = info.replica
                && r.leader
            {
                leading.push((i, r.generation.unwrap_or_default()));
            }
        }
        assert!(leading.len() <= 1, "two leaders at once: {leading:?}");
        if let [one] = leading[..] {
            return one;
        }
        assert!(
            Instant::now() < deadline,
            "no replica led within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `client`'s replica lists at least `n` agents (registered with any replica).
pub async fn wait_for_agents(client: &Client, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while client
        .list_agents()
        .await
        .map(|l| l.agents.len())
        .unwrap_or(0)
        < n
    {
        assert!(
            Instant::now() < deadline,
            "the replica never saw {n} agents"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
