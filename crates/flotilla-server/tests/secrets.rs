//! The secrets vault through real HTTP on both stores: versions, listing without values,
//! tenant isolation, roles, bad paths and values, rotation, deletion, tampered and moved
//! ciphertexts, and master-key rotation by re-wrapping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::auth::Role;
use flotilla_core::id::TenantId;
use flotilla_server::vault::{KeySource, MasterKey, MasterKeys, SecretPath, Vault, VaultError};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Backend, Settings, TestServer};

on_both_backends!(
    versions_round_trip_and_listings_show_no_values,
    tenants_are_isolated_and_only_admins_cross,
    roles_decide_who_lists_reads_and_writes,
    bad_paths_and_values_are_refused_and_store_nothing,
    rotation_generates_or_takes_a_value,
    deletion_removes_every_version_and_numbers_continue,
    moved_or_tampered_ciphertexts_do_not_open,
    master_key_rotation_rewraps_and_old_data_still_reads,
);

/// Settings whose vault uses a key file in `dir` (PostgreSQL has no embedded key file).
fn settings(dir: &Path) -> Settings {
    let key_file = dir.join("master.key");
    if !key_file.exists() {
        std::fs::write(&key_file, format!("{}\n", hex::encode([0x5a_u8; 32]))).unwrap();
    }
    Settings::default().raw(&format!(
        "[vault]\nmaster_key_file = \"{}\"\nkeep_versions = 3\nmax_value_bytes = 1024\n",
        key_file.display()
    ))
}

async fn start(backend: Backend, dir: &Path) -> TestServer {
    TestServer::start(backend, settings(dir)).await
}

async fn call(
    server: &TestServer,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = server
        .http
        .request(method, server.url(path))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// One HTTP/1.1 request written byte for byte, so the path reaches the server exactly as given
/// (HTTP clients normalise `..` and `%2e%2e` away).
async fn raw(server: &TestServer, method: &str, target: &str, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        support::ADMIN_KEY,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status: u16 = answer.split(' ').nth(1).unwrap().parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
    )
}

async fn put(server: &TestServer, key: &str, path: &str, value: &str) -> (StatusCode, Value) {
    call(
        server,
        key,
        reqwest::Method::PUT,
        &format!("/v1/secrets/{path}"),
        Some(json!({ "value": value })),
    )
    .await
}

async fn get(server: &TestServer, key: &str, path: &str) -> (StatusCode, Value) {
    call(
        server,
        key,
        reqwest::Method::GET,
        &format!("/v1/secrets/{path}"),
        None,
    )
    .await
}

async fn versions_round_trip_and_listings_show_no_values(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(backend, dir.path()).await;
    let admin = support::ADMIN_KEY;
    let (status, body) = put(&server, admin, "app/db/password", "first-Value-1").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"], 1);
    assert!(body.get("value").is_none());
    let (status, body) = put(&server, admin, "app/db/password", "second-Value-2").await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::CREATED, json!(2))
    );
    put(&server, admin, "app/api-key", "third-Value-3").await;
    put(&server, admin, "other/x", "fourth-Value-4").await;

    let (status, body) = get(&server, admin, "app/db/password").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["value"], "second-Value-2");
    assert_eq!(body["version"], 2);
    assert_eq!(body["path"], "app/db/password");
    let (_, body) = get(&server, admin, "app/db/password?version=1").await;
    assert_eq!(body["value"], "first-Value-1");
    let (status, body) = get(&server, admin, "app/db/password?version=9").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, list) = call(&server, admin, reqwest::Method::GET, "/v1/secrets", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = list.to_string();
    for value in [
        "first-Value-1",
        "second-Value-2",
        "third-Value-3",
        "fourth-Value-4",
    ] {
        assert!(!text.contains(value), "a listing shows a value: {text}");
    }
    let paths: Vec<&str> = list["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["app/api-key", "app/db/password", "other/x"]);
    let db = &list["secrets"][1];
    assert_eq!(db["latest_version"], 2);
    assert_eq!(db["versions"].as_array().unwrap().len(), 2);
    let (_, list) = call(
        &server,
        admin,
        reqwest::Method::GET,
        "/v1/secrets?prefix=app/db",
        None,
    )
    .await;
    assert_eq!(list["secrets"].as_array().unwrap().len(), 1);

    // Only `keep_versions` (3) versions are kept.
    for n in 3..=5 {
        put(&server, admin, "app/db/password", &format!("value-{n}")).await;
    }
    let (status, _) = get(&server, admin, "app/db/password?version=2").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = get(&server, admin, "app/db/password?version=3").await;
    assert_eq!(body["value"], "value-3");

    // The store holds no plaintext.
    let sealed = server
        .store
        .get_secret_version(TenantId::DEFAULT, "app/db/password", None)
        .await
        .unwrap()
        .unwrap();
    assert!(!sealed.ciphertext.windows(7).any(|w| w == b"value-5"));
    server.stop().await;
}

async fn tenants_are_isolated_and_only_admins_cross(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(backend, dir.path()).await;
    let tenant_b = TenantId(uuid::Uuid::now_v7());
    let a_operator = server.create_key(Role::Operator, TenantId::DEFAULT).await;
    let b_operator = server.create_key(Role::Operator, tenant_b).await;
    assert_eq!(
        put(&server, &a_operator, "shared/name", "a-secret-value")
            .await
            .0,
        StatusCode::CREATED
    );

    let (status, body) = get(&server, &b_operator, "shared/name").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(!body.to_string().contains("a-secret-value"));
    let (_, list) = call(
        &server,
        &b_operator,
        reqwest::Method::GET,
        "/v1/secrets",
        None,
    )
    .await;
    assert_eq!(list["secrets"], json!([]));
    let (status, _) = call(
        &server,
        &b_operator,
        reqwest::Method::DELETE,
        "/v1/secrets/shared/name",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // B's own secret at the same path is B's version 1.
    let (status, body) = put(&server, &b_operator, "shared/name", "b-secret-value").await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::CREATED, json!(1))
    );
    assert_eq!(
        get(&server, &a_operator, "shared/name").await.1["value"],
        "a-secret-value"
    );

    // Naming another tenant: refused to non-admins, allowed to admins.
    let (status, _) = get(
        &server,
        &b_operator,
        &format!("shared/name?tenant={}", TenantId::DEFAULT.0),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = get(
        &server,
        support::ADMIN_KEY,
        &format!("shared/name?tenant={}", tenant_b.0),
    )
    .await;
    assert_eq!(
        (status, body["value"].clone()),
        (StatusCode::OK, json!("b-secret-value"))
    );
    server.stop().await;
}

async fn roles_decide_who_lists_reads_and_writes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(backend, dir.path()).await;
    put(&server, support::ADMIN_KEY, "r/x", "role-test-value").await;
    let t = TenantId::DEFAULT;
    let viewer = server.create_key(Role::Viewer, t).await;
    let submitter = server.create_key(Role::Submitter, t).await;
    let agent = server.create_key(Role::Agent, t).await;
    let operator = server.create_key(Role::Operator, t).await;
    let list = |key: String| {
        let server = &server;
        async move {
            call(server, &key, reqwest::Method::GET, "/v1/secrets", None)
                .await
                .0
        }
    };
    assert_eq!(list(viewer.clone()).await, StatusCode::OK);
    assert_eq!(list(submitter.clone()).await, StatusCode::FORBIDDEN);
    assert_eq!(list(agent.clone()).await, StatusCode::FORBIDDEN);
    assert_eq!(get(&server, &viewer, "r/x").await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        put(&server, &viewer, "r/x", "nope").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(get(&server, &operator, "r/x").await.0, StatusCode::OK);
    let (status, _) = call(
        &server,
        &operator,
        reqwest::Method::POST,
        "/v1/vault/rewrap",
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "only admins rotate the master key"
    );
    let (status, _) = call(&server, "", reqwest::Method::GET, "/v1/secrets", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

async fn bad_paths_and_values_are_refused_and_store_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(backend, dir.path()).await;
    let admin = support::ADMIN_KEY;
    for path in [
        "a/../b",
        "..",
        "a/..",
        "a/%2e%2e/b",
        "%2e%2e",
        "a/%2E%2E",
        "a/./b",
        "a%0Ab",
        "a%00b",
        "a%1bb",
        "a%7fb",
        "a//b",
        "a/",
        "a%20b",
        "a%2Fb%2F..%2Fc",
    ] {
        let target = format!("/v1/secrets/{path}");
        let (status, body) =
            raw(&server, "PUT", &target, r#"{"value":"must-not-be-stored"}"#).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["field"], "path", "{path}: {body}");
        let (status, _) = raw(&server, "GET", &target, "").await;
        assert_eq!(status, 400, "{path}");
        let (status, _) = raw(&server, "POST", &format!("{target}/rotate"), "").await;
        assert_eq!(status, 400, "{path}");
    }
    let long = "x".repeat(257);
    assert_eq!(
        put(&server, admin, &long, "v").await.0,
        StatusCode::BAD_REQUEST
    );

    let (status, body) = put(&server, admin, "big", &"v".repeat(1025)).await;
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("value")),
        "{body}"
    );
    let (status, body) = put(&server, admin, "empty", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(
        &server,
        admin,
        reqwest::Method::PUT,
        "/v1/secrets/typed",
        Some(json!({"value": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A body error never quotes the body (it may hold the secret).
    let (status, body) = call(
        &server,
        admin,
        reqwest::Method::PUT,
        "/v1/secrets/typed",
        Some(json!({"valeu": "leaky-secret"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!body.to_string().contains("leaky-secret"), "{body}");
    let (status, _) = call(
        &server,
        admin,
        reqwest::Method::GET,
        "/v1/secrets?prefix=a%0A",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Prefixes are checked like paths: no `.`, `..` or empty segment, whatever the backend.
    let refused = ["../", "..", "a/../", "./x", "a//", "/a"].map(|p| (p, Some("prefix")));
    let accepted = ["a", "a/", "a/b", "..a/"].map(|p| (p, None));
    for (prefix, refused_field) in refused.into_iter().chain(accepted) {
        let (status, body) = call(
            &server,
            admin,
            reqwest::Method::GET,
            &format!("/v1/secrets?prefix={prefix}"),
            None,
        )
        .await;
        let want = match refused_field {
            Some(_) => StatusCode::BAD_REQUEST,
            None => StatusCode::OK,
        };
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (want, refused_field),
            "{prefix}: {body}"
        );
    }

    let (_, list) = call(&server, admin, reqwest::Method::GET, "/v1/secrets", None).await;
    assert_eq!(list["secrets"], json!([]), "nothing was stored");
    server.stop().await;
}

async fn rotation_generates_or_takes_a_value(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(backend, dir.path()).await;
    let admin = support::ADMIN_KEY;
    let rotate = |path: &'static str, body: Option<Value>| {
        let server = &server;
        async move {
            call(
                server,
                admin,
                reqwest::Method::POST,
                &format!("/v1/secrets/{path}/rotate"),
                body,
            )
            .await
        }
    };
    assert_eq!(rotate("missing", None).await.0, StatusCode::NOT_FOUND);
    put(&server, admin, "svc/token", "initial").await;
    let (status, body) = rotate("svc/token", None).await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::CREATED, json!(2)),
        "{body}"
    );
    assert!(body.get("value").is_none(), "not revealed unless asked");
    let generated = get(&server, admin, "svc/token").await.1["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 43, "32 random bytes as unpadded base64");
    assert_ne!(generated, "initial");

    let (_, body) = rotate("svc/token", Some(json!({"reveal": true, "bytes": 64}))).await;
    let revealed = body["value"].as_str().unwrap().to_owned();
    assert_eq!(revealed.len(), 86);
    assert_eq!(
        get(&server, admin, "svc/token").await.1["value"],
        revealed.as_str()
    );

    let (_, body) = rotate("svc/token", Some(json!({"value": "supplied-value"}))).await;
    assert_eq!(body["version"], 4);
    assert_eq!(
        get(&server, admin, "svc/token").await.1["value"],
        "supplied-value"
    );
    assert_eq!(
        rotate("svc/token", Some(json!({"bytes": 8}))).await.0,
        StatusCode::BAD_REQUEST
    );
    server.stop().await;
}

async fn deletion_removes_every_version_and_numbers_continue(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(backend, dir.path()).await;
    let admin = support::ADMIN_KEY;
    put(&server, admin, "tmp/x", "one").await;
    put(&server, admin, "tmp/x", "two").await;
    let (status, body) = call(
        &server,
        admin,
        reqwest::Method::DELETE,
        "/v1/secrets/tmp/x",
        None,
    )
    .await;
    assert_eq!(
        (status, body["versions"].clone()),
        (StatusCode::OK, json!(2)),
        "{body}"
    );
    assert_eq!(get(&server, admin, "tmp/x").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&server, admin, "tmp/x?version=1").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = call(
        &server,
        admin,
        reqwest::Method::DELETE,
        "/v1/secrets/tmp/x",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = put(&server, admin, "tmp/x", "three").await;
    assert_eq!(body["version"], 3, "version numbers are never reused");
    server.stop().await;
}

async fn moved_or_tampered_ciphertexts_do_not_open(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(backend, dir.path()).await;
    let admin = support::ADMIN_KEY;
    put(&server, admin, "orig", "the-original-value").await;
    let store = &server.store;
    let t = TenantId::DEFAULT;
    let sealed = store
        .get_secret_version(t, "orig", None)
        .await
        .unwrap()
        .unwrap();

    // Copied, bytes unchanged, to another path, another tenant and another version.
    let mut moved = sealed.clone();
    moved.path = "moved".to_owned();
    assert!(store.insert_secret_version(&moved, 10).await.unwrap());
    let mut other = sealed.clone();
    other.tenant_id = TenantId(uuid::Uuid::now_v7());
    assert!(store.insert_secret_version(&other, 10).await.unwrap());
    let mut renumbered = sealed.clone();
    renumbered.version = 2;
    assert!(store.insert_secret_version(&renumbered, 10).await.unwrap());
    // A flipped bit in the ciphertext, and in the wrapped key.
    let mut flipped = sealed.clone();
    flipped.version = 3;
    *flipped.ciphertext.last_mut().unwrap() ^= 1;
    let mut flipped_key = sealed.clone();
    flipped_key.path = "flipped-key".to_owned();
    flipped_key.wrapped_key[30] ^= 1;
    assert!(store.insert_secret_version(&flipped_key, 10).await.unwrap());

    for path in ["moved", "orig", "flipped-key"] {
        let (status, body) = get(&server, admin, path).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {body}");
        assert!(!body.to_string().contains("the-original-value"));
    }
    let (status, _) = get(
        &server,
        admin,
        &format!("orig?tenant={}", other.tenant_id.0),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(store.insert_secret_version(&flipped, 10).await.unwrap());
    assert_eq!(
        get(&server, admin, "orig").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    // The genuine version still opens where it belongs.
    let (status, body) = get(&server, admin, "orig?version=1").await;
    assert_eq!(
        (status, body["value"].clone()),
        (StatusCode::OK, json!("the-original-value"))
    );
    server.stop().await;
}

async fn master_key_rotation_rewraps_and_old_data_still_reads(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let database = support::Database::create(backend);
    let store = database.location.open().await;
    let server = TestServer::start_on(store.clone(), settings(dir.path())).await;
    let admin = support::ADMIN_KEY;
    for n in 0..5 {
        put(&server, admin, &format!("rot/{n}"), &format!("value-{n}")).await;
    }
    let old_key = MasterKey::new([0x5a; 32]);
    server.stop().await;

    // The operator makes a new key current and keeps the old one as previous.
    let key_file = dir.path().join("master.key");
    std::fs::write(
        &key_file,
        format!(
            "{}\n{}\n",
            hex::encode([0x77_u8; 32]),
            hex::encode([0x5a_u8; 32])
        ),
    )
    .unwrap();
    let new_key = MasterKey::new([0x77; 32]);
    let server = TestServer::start_on(
        store.clone(),
        Settings::default().raw(&format!(
            "[vault]\nmaster_key_file = \"{}\"\n",
            key_file.display()
        )),
    )
    .await;
    // Before re-wrapping, old versions read through the previous key; new ones use the new.
    assert_eq!(get(&server, admin, "rot/0").await.1["value"], "value-0");
    put(&server, admin, "rot/new", "after-rotation").await;
    let (status, report) = call(
        &server,
        admin,
        reqwest::Method::POST,
        "/v1/vault/rewrap",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["rewrapped"], 5);
    assert_eq!(report["unreadable"], 0);
    assert_eq!(report["master_key_id"], new_key.id());
    let (_, again) = call(
        &server,
        admin,
        reqwest::Method::POST,
        "/v1/vault/rewrap",
        None,
    )
    .await;
    assert_eq!(again["rewrapped"], 0);
    assert_eq!(
        store.secret_versions_by_master_key().await.unwrap(),
        vec![(new_key.id().to_owned(), 6)]
    );
    server.stop().await;

    // With only the new key, everything still reads; with only the old one, nothing does.
    let only_new = Vault::builtin(
        MasterKeys::new(
            MasterKey::new([0x77; 32]),
            Vec::new(),
            KeySource::Environment,
        ),
        store.clone(),
        10,
    );
    let only_old = Vault::builtin(
        MasterKeys::new(old_key, Vec::new(), KeySource::Environment),
        store.clone(),
        10,
    );
    for n in 0..5 {
        let path = SecretPath::parse(&format!("rot/{n}")).unwrap();
        let secret = only_new.get(TenantId::DEFAULT, &path, None).await.unwrap();
        assert_eq!(secret.value.expose_secret(), format!("value-{n}"));
        assert!(matches!(
            only_old.get(TenantId::DEFAULT, &path, None).await,
            Err(VaultError::UnknownMasterKey { .. })
        ));
    }
    let debug = format!(
        "{:?}",
        only_new
            .get(
                TenantId::DEFAULT,
                &SecretPath::parse("rot/1").unwrap(),
                None
            )
            .await
            .unwrap()
    );
    assert!(!debug.contains("value-1"), "Debug shows a value: {debug}");
    database.remove().await;
}

/// A vault over `store` with the test key, to write secrets before a server starts.
fn test_vault(store: &flotilla_store::DynStore) -> Vault {
    Vault::builtin(
        MasterKeys::new(
            MasterKey::new([0x5a; 32]),
            Vec::new(),
            KeySource::Environment,
        ),
        store.clone(),
        10,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_env_secrets_reach_local_processes_when_they_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seen");
    let database = support::Database::create(Backend::Sqlite);
    let store = database.location.open().await;
    let pool = format!(
        "[[pools]]\nname = \"with_secret\"\nprovisioner = \"local\"\nmin_instances = 1\nmax_instances = 1\n\
         command = [\"/bin/sh\", \"-c\", \"printf '%s|%s' \\\"$AGENT_TOKEN\\\" \\\"$PLAIN\\\" > {out}.tmp && mv {out}.tmp {out}; exec sleep 30\"]\n\
         env = {{ AGENT_TOKEN = \"secret://agents/token\", PLAIN = \"plain-value\" }}\n",
        out = out.display()
    );
    let settings = settings(dir.path())
        .set("fleet.autoscale_interval_ms", 100)
        .raw(&pool);
    // The secret does not exist yet: the process is not started, and is retried.
    let server = TestServer::start_on(store.clone(), settings).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!out.exists(), "a process started without its secret");
    let token = SecretPath::parse("agents/token").unwrap();
    test_vault(&store)
        .put(
            TenantId::DEFAULT,
            &token,
            &secrecy::SecretString::from("injected-token-value".to_owned()),
            None,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    support::eventually(
        "the process starts with its secret",
        Duration::from_secs(20),
        || {
            let out = out.clone();
            async move { out.exists() }
        },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "injected-token-value|plain-value"
    );
    server.stop().await;
    database.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_env_secrets_go_into_the_kubernetes_secret_not_the_deployment() {
    use axum::http::Method;
    type Seen = Arc<Mutex<Vec<(Method, String, Value)>>>;
    async fn api(
        axum::extract::State(seen): axum::extract::State<Seen>,
        method: Method,
        uri: axum::http::Uri,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        seen.lock()
            .unwrap()
            .push((method.clone(), uri.path().to_owned(), body.clone()));
        if method == Method::PATCH {
            return (axum::http::StatusCode::OK, axum::Json(body)).into_response();
        }
        let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not found"});
        (axum::http::StatusCode::NOT_FOUND, axum::Json(status)).into_response()
    }
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(api).with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: flotilla-test\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: not-a-secret\n"
        ),
    )
    .unwrap();
    let database = support::Database::create(Backend::Sqlite);
    let store = database.location.open().await;
    test_vault(&store)
        .put(
            TenantId::DEFAULT,
            &SecretPath::parse("providers/openai").unwrap(),
            &secrecy::SecretString::from("sk-kube-secret-value".to_owned()),
            None,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let pool = format!(
        "[[pools]]\nname = \"k8s_pool\"\nprovisioner = \"kubernetes\"\nmin_instances = 1\nmax_instances = 1\n\
         env = {{ OPENAI_API_KEY = \"secret://providers/openai\", REGION = \"eu\" }}\n\
         [pools.kubernetes]\nimage = \"ghcr.io/example/flotilla:1\"\nnamespace = \"flotilla-test\"\nkubeconfig = {:?}\n",
        kubeconfig.display().to_string()
    );
    let settings = settings(dir.path())
        .set("fleet.autoscale_interval_ms", 100)
        .raw(&pool);
    let server = TestServer::start_on(store.clone(), settings).await;
    support::eventually("the Deployment is applied", Duration::from_secs(10), || {
        let seen = seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .iter()
                .any(|(_, p, _)| p.contains("/deployments/"))
        }
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    let (_, _, secret) = seen
        .iter()
        .find(|(m, p, _)| *m == Method::PATCH && p.contains("/secrets/"))
        .expect("the pool's Secret is applied");
    use base64::Engine;
    let encoded = secret["data"]["OPENAI_API_KEY"].as_str().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    assert_eq!(decoded, b"sk-kube-secret-value");
    let (_, _, deployment) = seen
        .iter()
        .find(|(_, p, _)| p.contains("/deployments/"))
        .unwrap();
    let text = deployment.to_string();
    assert!(
        !text.contains("sk-kube-secret-value") && !text.contains("secret://"),
        "{text}"
    );
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let key = env.iter().find(|e| e["name"] == "OPENAI_API_KEY").unwrap();
    assert!(
        key["valueFrom"]["secretKeyRef"]["name"].is_string(),
        "{key}"
    );
    let region = env.iter().find(|e| e["name"] == "REGION").unwrap();
    assert_eq!(region["value"], "eu");
    server.stop().await;
    database.remove().await;
}
