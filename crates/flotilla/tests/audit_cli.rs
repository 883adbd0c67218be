//! Keys, tenants and the audit log through the CLI against a real server, and `audit verify`
//! finding the first broken link after a row of the database is altered or removed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN};
use flotilla_testkit::ServerProcess;
use serde_json::Value;
use std::process::{Command, Output};

fn flotilla(server: &ServerProcess, key: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("FLOTILLA_URL", server.base_url())
        .env("FLOTILLA_KEY", key)
        .output()
        .expect("the binary runs")
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

#[tokio::test]
async fn keys_tenants_and_a_tamper_evident_audit_log_through_the_cli() {
    let mut server = ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .start()
        .await
        .unwrap();

    // A tenant and a key in it, created by the admin; the key is printed once and works.
    let tenant = ok(&flotilla(
        &server,
        ADMIN_KEY,
        &["tenants", "create", "acme"],
    ));
    let tenant = tenant.trim();
    let created: Value = serde_json::from_str(&ok(&flotilla(
        &server,
        ADMIN_KEY,
        &[
            "keys",
            "create",
            "--name",
            "acme ops",
            "--role",
            "operator",
            "--tenant",
            tenant,
            "--expires-in",
            "30d",
            "--output",
            "json",
        ],
    )))
    .unwrap();
    let acme_key = created["key"].as_str().unwrap().to_owned();
    assert_eq!(created["tenant_id"], tenant);
    // The operator lists its own tenant's keys, and may not create an admin.
    let listed = ok(&flotilla(
        &server,
        &acme_key,
        &["keys", "list", "--output", "json"],
    ));
    assert!(listed.contains("acme ops") && !listed.contains(&acme_key[20..]));
    let refused = flotilla(
        &server,
        &acme_key,
        &["keys", "create", "--name", "x", "--role", "admin"],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"));
    // Revoked: refused from then on.
    let id = created["id"].as_str().unwrap();
    ok(&flotilla(
        &server,
        ADMIN_KEY,
        &["keys", "revoke", id, "--tenant", tenant],
    ));
    assert!(
        !flotilla(&server, &acme_key, &["keys", "list"])
            .status
            .success()
    );

    // The log verifies, and an export verifies the same.
    let verified = ok(&flotilla(&server, ADMIN_KEY, &["audit", "verify"]));
    assert!(verified.starts_with("Audit log intact"), "{verified}");
    let export = server.data_dir().join("audit.jsonl");
    ok(&flotilla(
        &server,
        ADMIN_KEY,
        &["audit", "export", "--out", export.to_str().unwrap()],
    ));
    let lines = std::fs::read_to_string(&export).unwrap();
    let actions: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        ["tenant.create", "key.create", "key.revoke", "auth.failure"]
            .iter()
            .all(|a| actions.iter().any(|x| x == a)),
        "{actions:?}"
    );
    let master_key = server.data_dir().join("master.key");
    let master_key = master_key.to_str().unwrap();
    ok(&flotilla(
        &server,
        ADMIN_KEY,
        &[
            "audit",
            "verify",
            "--file",
            export.to_str().unwrap(),
            "--master-key-file",
            master_key,
        ],
    ));
    // Without the master key, an export cannot be checked.
    let keyless = flotilla(
        &server,
        ADMIN_KEY,
        &["audit", "verify", "--file", export.to_str().unwrap()],
    );
    assert!(!keyless.status.success());
    assert!(String::from_utf8_lossy(&keyless.stderr).contains("master key"));

    // An export with one field changed fails at that entry.
    let tampered_file = server.data_dir().join("tampered.jsonl");
    std::fs::write(
        &tampered_file,
        lines.replacen("\"success\"", "\"denied\"", 1),
    )
    .unwrap();
    let out = flotilla(
        &server,
        ADMIN_KEY,
        &[
            "audit",
            "verify",
            "--file",
            tampered_file.to_str().unwrap(),
            "--master-key-file",
            master_key,
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was altered"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Rows altered or removed in the database itself are found by verify.
    let db = server.data_dir().join("flotilla.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE audit SET target = 'nothing to see' WHERE seq = 2")
        .execute(&pool)
        .await
        .unwrap();
    let out = flotilla(&server, ADMIN_KEY, &["audit", "verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && stderr.contains("entry 2 was altered"),
        "{stderr}"
    );
    // Put it back from the export, then remove a row instead.
    let original: Value = serde_json::from_str(lines.lines().nth(1).unwrap()).unwrap();
    sqlx::query("UPDATE audit SET target = ?1 WHERE seq = 2")
        .bind(original["target"].as_str().unwrap())
        .execute(&pool)
        .await
        .unwrap();
    ok(&flotilla(&server, ADMIN_KEY, &["audit", "verify"]));
    sqlx::query("DELETE FROM audit WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let out = flotilla(&server, ADMIN_KEY, &["audit", "verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && stderr.contains("entries 3..3 are missing"),
        "{stderr}"
    );
    // The oldest entries removed: reported, not taken for a shorter log.
    sqlx::query("DELETE FROM audit WHERE seq <= 3")
        .execute(&pool)
        .await
        .unwrap();
    let out = flotilla(&server, ADMIN_KEY, &["audit", "verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && stderr.contains("entries 1..3 are missing"),
        "{stderr}"
    );
    // An anchor recorded earlier finds the newest entries deleted.
    let head = verified
        .trim()
        .rsplit("head ")
        .next()
        .unwrap()
        .trim_end_matches('.')
        .to_owned();
    let head_seq: i64 = head.split(':').next().unwrap().parse().unwrap();
    sqlx::query("DELETE FROM audit WHERE seq >= ?1")
        .bind(head_seq)
        .execute(&pool)
        .await
        .unwrap();
    let out = flotilla(&server, ADMIN_KEY, &["audit", "verify", "--since", &head]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && stderr.contains("newer entries were deleted"),
        "{head}: {stderr} {}",
        String::from_utf8_lossy(&out.stdout)
    );
    pool.close().await;
    server.terminate().await.unwrap();
}
