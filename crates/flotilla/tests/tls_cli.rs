//! The CLI against a control plane serving HTTPS and requiring client certificates, with
//! certificates made in the test (rcgen): with `--ca-file` and `--client-cert/--client-key` a
//! command succeeds; without the CA it fails and says to pass `--ca-file`; without a client
//! certificate it fails too. The same settings work from the environment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN};
use flotilla_testkit::pki::TestCa;
use rcgen::ExtendedKeyUsagePurpose;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `flotilla serve`, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(url: &str, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("FLOTILLA_URL", url)
        .env("FLOTILLA_KEY", ADMIN_KEY)
        .env_remove("FLOTILLA_CA_FILE")
        .env_remove("FLOTILLA_CLIENT_CERT")
        .env_remove("FLOTILLA_CLIENT_KEY");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_cli_reaches_a_tls_control_plane_with_its_ca_and_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("flotilla test ca").unwrap();
    let ca_file = ca.write_cert(dir.path(), "ca.pem").unwrap();
    let (server_cert, server_key) = ca
        .issue_files(
            dir.path(),
            "server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
        .unwrap();
    let (client_cert, client_key) = ca
        .issue_files(
            dir.path(),
            "client",
            &["operator"],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
        .unwrap();
    let config = dir.path().join("flotilla.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_file = {server_cert:?}\nkey_file = {server_key:?}\nclient_ca_file = {ca_file:?}\n"
        ),
    )
    .unwrap();
    let port = flotilla_testkit::free_port().unwrap();
    let data = dir.path().join("data");
    let _server = Serve(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&data)
            .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("https://127.0.0.1:{port}");
    let (ca_arg, cert_arg, key_arg) = (
        ca_file.to_str().unwrap(),
        client_cert.to_str().unwrap(),
        client_key.to_str().unwrap(),
    );
    let full = [
        "agents",
        "list",
        "--output",
        "json",
        "--ca-file",
        ca_arg,
        "--client-cert",
        cert_arg,
        "--client-key",
        key_arg,
    ];

    // With the CA and a client certificate: it answers (once the server is up).
    let started = Instant::now();
    let out = loop {
        let out = cli(&url, &full, &[]);
        if out.status.success() || started.elapsed() > Duration::from_secs(30) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed.is_object() || listed.is_array(), "{listed}");

    // The same from the environment.
    let out = cli(
        &url,
        &["agents", "list"],
        &[
            ("FLOTILLA_CA_FILE", &ca_file),
            ("FLOTILLA_CLIENT_CERT", &client_cert),
            ("FLOTILLA_CLIENT_KEY", &client_key),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));

    // Without the CA: the server's certificate is not trusted, and the message says what to do.
    let out = cli(
        &url,
        &[
            "agents",
            "list",
            "--client-cert",
            cert_arg,
            "--client-key",
            key_arg,
        ],
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not signed by a CA this client trusts") && stderr.contains("--ca-file"),
        "{}",
        text(&out)
    );

    // Without a client certificate: refused in the handshake.
    let out = cli(&url, &["agents", "list", "--ca-file", ca_arg], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--client-cert"), "{}", text(&out));

    // A certificate without its key is refused before any request.
    let out = cli(
        &url,
        &[
            "agents",
            "list",
            "--ca-file",
            ca_arg,
            "--client-cert",
            cert_arg,
        ],
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out));
}
