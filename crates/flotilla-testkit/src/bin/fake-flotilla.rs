//! A stand-in for the `flotilla` binary, used only by this crate's own tests of the process
//! harnesses: `serve` and `agent` take the same leading flags as the real commands, serve
//! `GET /health`, and exit cleanly on SIGTERM.

use axum::Router;
use axum::routing::get;
use std::collections::HashMap;
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first().cloned() else {
        eprintln!("usage: fake-flotilla serve|agent --listen ADDR …");
        return ExitCode::from(2);
    };
    let flags: HashMap<&str, &str> = args[1..]
        .chunks(2)
        .filter_map(|pair| match pair {
            [k, v] => Some((k.as_str(), v.as_str())),
            _ => None,
        })
        .collect();
    let Some(listen) = flags.get("--listen") else {
        eprintln!("--listen is required");
        return ExitCode::from(2);
    };
    if std::env::var("FAKE_FLOTILLA_FAIL").is_ok() {
        eprintln!("failing on purpose");
        return ExitCode::from(3);
    }
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    if command == "serve" {
        if let Some(dir) = flags.get("--data-dir") {
            // Each start leaves a mark, so tests can see that a restart reused the directory.
            let marks = std::path::Path::new(dir).join("starts");
            let count = std::fs::read_to_string(&marks)
                .map(|s| s.len())
                .unwrap_or(0);
            let _ = std::fs::write(&marks, "x".repeat(count + 1));
        }
        println!("fake control plane on {listen}");
    } else {
        let agent_type = flags.get("--type").copied().unwrap_or("unknown");
        let id = uuid::Uuid::now_v7();
        println!("agent {id} ({agent_type}) listening on http://{listen}");
    }
    let key = std::env::var("FLOTILLA_BOOTSTRAP_ADMIN_KEY").unwrap_or_default();
    let app = Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/key", get(move || async move { key }));
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return ExitCode::from(1);
    };
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            term.recv().await;
        })
        .await;
    eprintln!("terminated");
    if served.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
