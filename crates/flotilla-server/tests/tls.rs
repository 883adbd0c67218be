//! TLS on the API listener (`[tls]`): with certificates made in the test (rcgen), a request
//! succeeds when the client trusts the CA and fails when it does not; with `client_ca_file`
//! set, a client without a certificate is refused and one with a certificate signed by that CA
//! gets through (and still needs its API key).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_testkit::pki::TestCa;
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use support::{ADMIN_KEY, Backend, Settings, TestServer};

/// A CA and what it signs (the testkit's, with this file's panics on failure).
struct Ca(TestCa);

impl Ca {
    fn new(name: &str) -> Ca {
        Ca(TestCa::new(name).unwrap())
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        self.0.issue(names, usage).unwrap()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A client trusting `ca` (none: only the system's nothing), with an optional client identity.
fn client(ca: Option<&Ca>, identity: Option<&(String, String)>) -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        roots.add(CertificateDer::from(ca.0.cert_der())).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
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

async fn get(client: &reqwest::Client, url: &str) -> Result<u16, String> {
    client
        .get(format!("{url}/v1/agents"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

async fn tls_listener_serves_https(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("flotilla test ca");
    let (cert, key) = ca.issue(
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let settings = Settings::default().raw(&format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        write(dir.path(), "server.pem", &cert),
        write(dir.path(), "server.key", &key),
    ));
    let server = TestServer::start(backend, settings).await;
    let url = server.url.replace("http://", "https://");

    assert_eq!(get(&client(Some(&ca), None), &url).await, Ok(200));
    // A client that does not trust the CA cannot connect; nor can plain HTTP.
    assert!(get(&client(None, None), &url).await.is_err());
    assert!(
        get(&client(Some(&Ca::new("other")), None), &url)
            .await
            .is_err()
    );
    assert!(get(&reqwest::Client::new(), &server.url).await.is_err());
    // Still authenticated: no key, 401.
    let response = client(Some(&ca), None)
        .get(format!("{url}/v1/agents"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    server.stop().await;
}

async fn client_certificates_are_required_with_a_client_ca(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("flotilla test ca");
    let clients = Ca::new("flotilla client ca");
    let (cert, key) = ca.issue(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let settings = Settings::default().raw(&format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
        write(dir.path(), "server.pem", &cert),
        write(dir.path(), "server.key", &key),
        write(dir.path(), "clients.pem", &clients.0.cert_pem()),
    ));
    let server = TestServer::start(backend, settings).await;
    let url = server.url.replace("http://", "https://");

    let good = clients.issue(&["agent-1"], ExtendedKeyUsagePurpose::ClientAuth);
    assert_eq!(get(&client(Some(&ca), Some(&good)), &url).await, Ok(200));
    // No client certificate, or one from another CA: the handshake is refused.
    assert!(get(&client(Some(&ca), None), &url).await.is_err());
    let stranger = Ca::new("stranger").issue(&["x"], ExtendedKeyUsagePurpose::ClientAuth);
    assert!(
        get(&client(Some(&ca), Some(&stranger)), &url)
            .await
            .is_err()
    );
    server.stop().await;
}

#[tokio::test]
async fn unusable_files_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::default().raw(&format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        write(dir.path(), "empty.pem", ""),
        dir.path().join("missing.key"),
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
        panic!("the server started with unusable TLS files");
    };
    assert!(error.to_string().contains("empty.pem"), "{error}");
}

on_both_backends!(
    tls_listener_serves_https,
    client_certificates_are_required_with_a_client_ca
);

/// Handshakes in flight are capped and bounded in time (issue 15, "connections"): clients that
/// open connections and never say hello hold the handshake places only until the timeout, and a
/// real client is served once a place is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_handshakes_are_capped_and_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("flotilla test ca");
    let (cert, key) = ca.issue(
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let settings = Settings::default()
        .raw(&format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            write(dir.path(), "server.pem", &cert),
            write(dir.path(), "server.key", &key),
        ))
        .set("server.max_tls_handshakes", 3)
        .set("server.header_read_timeout_ms", 1_000);
    let server = TestServer::start(Backend::Sqlite, settings).await;
    let url = server.url.replace("http://", "https://");
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    assert_eq!(get(&client(Some(&ca), None), &url).await, Ok(200));
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(700)
            && waited < std::time::Duration::from_secs(5),
        "served after {waited:?}: the 3 silent handshakes should hold every place for 1 s"
    );
    drop(silent);
    server.stop().await;
}
