//! `flotilla secrets` against a real control plane process (embedded SQLite, trace logging):
//! put from stdin and from a file, get, list, rotate, delete, rewrap; the master key file is
//! generated with 0600 permissions; and no secret value or master key reaches the server's logs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN};
use flotilla_testkit::ServerProcess;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn flotilla(server: &ServerProcess, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("FLOTILLA_URL", server.base_url())
        .env("FLOTILLA_KEY", ADMIN_KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_round_trip_through_the_cli_and_never_reach_the_logs() {
    let mut server = ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", "trace")
        .env("FLOTILLA_LOG__LEVEL", "trace")
        .start()
        .await
        .expect("server starts");

    // The first embedded start generated a private master key file.
    let key_file = server.data_dir().join("master.key");
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode, 0o600);
    let master_key = std::fs::read_to_string(&key_file)
        .unwrap()
        .lines()
        .find(|l| !l.starts_with('#'))
        .unwrap()
        .to_owned();

    let first = "cli-Secret-from-stdin-4711";
    let out = flotilla(
        &server,
        &["secrets", "put", "app/db/password"],
        Some(&format!("{first}\n")),
    );
    assert_eq!(ok(&out).trim(), "app/db/password version 1");
    let file = tempfile::NamedTempFile::new().unwrap();
    let second = "cli-Secret-from-file-0815";
    std::fs::write(file.path(), format!("{second}\n")).unwrap();
    let out = flotilla(
        &server,
        &[
            "secrets",
            "put",
            "app/db/password",
            "--value-file",
            file.path().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(ok(&out).trim(), "app/db/password version 2");

    let out = flotilla(&server, &["secrets", "get", "app/db/password"], None);
    assert_eq!(ok(&out), format!("{second}\n"));
    let out = flotilla(
        &server,
        &["secrets", "get", "app/db/password", "--at", "1"],
        None,
    );
    assert_eq!(ok(&out), format!("{first}\n"));
    let out = flotilla(
        &server,
        &["secrets", "get", "app/db/password", "--output", "json"],
        None,
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(
        (json["version"].clone(), json["value"].clone()),
        (2.into(), second.into())
    );

    let out = flotilla(&server, &["secrets", "list"], None);
    let listing = ok(&out);
    assert!(listing.contains("app/db/password"), "{listing}");
    assert!(
        !listing.contains(first) && !listing.contains(second),
        "{listing}"
    );
    let out = flotilla(&server, &["secrets", "list", "--output", "json"], None);
    let json: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(json["secrets"][0]["latest_version"], 2);

    let out = flotilla(
        &server,
        &["secrets", "rotate", "app/db/password", "--reveal"],
        None,
    );
    let generated = ok(&out).trim().to_owned();
    assert_eq!(generated.len(), 43);
    let out = flotilla(&server, &["secrets", "get", "app/db/password"], None);
    assert_eq!(ok(&out).trim(), generated);

    // Bad input fails with the server's message and stores nothing.
    let out = flotilla(&server, &["secrets", "put", "a/../b"], Some("x"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("path"),
        "{out:?}"
    );
    let out = flotilla(&server, &["secrets", "put", "empty"], Some(""));
    assert!(!out.status.success());
    let out = flotilla(&server, &["secrets", "get", "missing"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{out:?}"
    );

    let out = flotilla(&server, &["secrets", "rewrap"], None);
    assert!(ok(&out).contains("Re-wrapped 0 data keys"));
    let out = flotilla(&server, &["secrets", "delete", "app/db/password"], None);
    assert_eq!(ok(&out).trim(), "app/db/password deleted (3 versions)");
    let out = flotilla(&server, &["secrets", "get", "app/db/password"], None);
    assert!(!out.status.success());

    // The vault survives a restart with its generated key.
    flotilla(
        &server,
        &["secrets", "put", "survives"],
        Some("across-restarts-1234"),
    );
    server.restart().await.unwrap();
    let out = flotilla(&server, &["secrets", "get", "survives"], None);
    assert_eq!(ok(&out).trim(), "across-restarts-1234");

    // All of it: a secret early in a verbose log must not hide behind the tail.
    let logs = server.all_logs();
    assert!(
        logs.contains("Audit") || logs.contains("secret.read"),
        "the log is verbose enough to matter"
    );
    for secret in [
        first,
        second,
        generated.as_str(),
        "across-restarts-1234",
        master_key.as_str(),
    ] {
        assert!(
            !logs.contains(secret),
            "a secret reached the logs: {secret}"
        );
    }
    assert!(
        logs.contains("master.key"),
        "the start-up log says where the master key is"
    );
    server.terminate().await.unwrap();
}
