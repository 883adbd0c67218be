//! The official OpenAI Python SDK against the real binary's model gateway, with nothing but the
//! base URL and key changed: listing models, a completion, a stream with usage, and the SDK's own
//! exception types for a 404 and a 400. The SDK comes from the CI venv (`pip install openai`,
//! see .ci/run); `FLOTILLA_TEST_PYTHON` names its Python.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, BIN};
use flotilla_testkit::ServerProcess;
use serde_json::Value;

fn python() -> String {
    std::env::var("FLOTILLA_TEST_PYTHON").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/ci-venv/bin/python"
        )
        .to_owned()
    })
}

#[tokio::test]
async fn the_openai_sdk_works_against_the_gateway_unchanged() {
    let python = python();
    let has_sdk = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_sdk,
        "{python} cannot import openai; .ci/run installs it (pip install openai into target/ci-venv)"
    );
    let server = ServerProcess::builder(BIN)
        .env("FLOTILLA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .start()
        .await
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk/client.py");
    let base_url = format!("{}/v1", server.base_url());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args([script, &base_url, ADMIN_KEY])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let models: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        models.contains(&"gpt-5") && models.contains(&"gemini-2.0-flash"),
        "{v}"
    );
    assert!(v["content"].as_str().unwrap().contains("simulated"), "{v}");
    assert_eq!(v["fingerprint"], "flotilla-simulated");
    assert!(
        v["usage"][1].as_u64().unwrap() <= 20,
        "max_tokens is honoured: {v}"
    );
    assert!(
        v["stream_chunks"].as_u64().unwrap() >= 16,
        "streamed chunk by chunk: {v}"
    );
    assert!(
        v["stream_text"].as_str().unwrap().contains("simulated"),
        "{v}"
    );
    assert_eq!(v["stream_usage"][1], v["stream_chunks"], "{v}");
    assert_eq!(v["not_found"][0], 404, "{v}");
    assert_eq!(v["not_found"][1], "model_not_found", "{v}");
    assert_eq!(v["bad_request"][0], 400, "{v}");
    assert_eq!(v["bad_request"][1], "messages", "{v}");
    drop(server);
}
