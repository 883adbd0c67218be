//! What one client may hold open (issue 15, "connections"; docs/security.md, "Threat model"):
//! connections that never finish their headers are cut off and do not keep a real client out,
//! the connection cap holds, a refused request leaves its keep-alive connection usable, and one
//! key may park only so many long-polls. Through the real HTTP listener.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::{ADMIN_KEY, Backend, Settings, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

on_both_backends!(a_key_parks_at_most_its_long_polls);

fn addr(server: &TestServer) -> String {
    server.url("").trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes the connection or `limit` passes: true when it closed.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Reads one HTTP/1.1 answer with a Content-Length body; its status line.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(
            n > 0,
            "the connection closed: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                return text.lines().next().unwrap_or_default().to_owned();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_cut_off_and_do_not_keep_a_real_client_out() {
    let server = TestServer::start(
        Backend::Sqlite,
        Settings::default().set("server.header_read_timeout_ms", 1_500),
    )
    .await;
    // 1,000 connections that start a request and never finish its headers.
    let mut held = Vec::with_capacity(1_000);
    for _ in 0..1_000 {
        let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
        stream
            .write_all(b"GET /v1/tasks HTTP/1.1\r\nHost: flotilla\r\nX-Slow: ")
            .await
            .unwrap();
        held.push(stream);
    }
    // A real client is served while they are held.
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(server.url("/v1/tasks"))
        .bearer_auth(ADMIN_KEY)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Each half-open connection is closed once the header-read timeout passes.
    let mut open = 0;
    for stream in held.iter_mut().step_by(50) {
        if !closed_within(stream, Duration::from_secs(5)).await {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "half-open connections still open after the timeout"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let server = TestServer::start(
        Backend::Sqlite,
        Settings::default()
            .set("server.max_connections", 5)
            .set("server.header_read_timeout_ms", 1_000),
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(TcpStream::connect(addr(&server)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The sixth connection is not served until the timeout frees a place.
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(server.url("/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "served after {:?}, before any of the 5 idle connections was closed",
        started.elapsed()
    );
    drop(idle);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_leaves_its_connection_usable() {
    let server = TestServer::start(Backend::Sqlite, Settings::default()).await;
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    let body = json!({"agent_type": "x", "input": {"text": "y".repeat(2_000)}}).to_string();
    for key in ["flt_nosuchkey_wrongsecret", ADMIN_KEY] {
        // The headers first, the body a moment later: a server that answers before reading the
        // body cannot drain it and closes the connection.
        stream
            .write_all(
                format!(
                    "POST /v1/tasks HTTP/1.1\r\nHost: flotilla\r\nAuthorization: Bearer {key}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(body.as_bytes()).await.unwrap();
        let status = read_answer(&mut stream).await;
        let expected = if key == ADMIN_KEY { "422" } else { "401" };
        assert!(status.contains(expected), "{status}");
    }
    server.stop().await;
}

async fn a_key_parks_at_most_its_long_polls(backend: Backend) {
    let server = TestServer::start(
        backend,
        Settings::default()
            .pool("idle")
            .set("server.max_waits_per_key", 2),
    )
    .await;
    let task = server.submit(&support::task("idle", json!({}))).await;
    let path = format!("/v1/tasks/{}?wait=3", task.id);
    let wait = || server.send(ADMIN_KEY, reqwest::Method::GET, &path, None);
    let (first, second, third) = tokio::join!(wait(), wait(), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        wait().await
    });
    assert_eq!((first.0, second.0), (200, 200));
    assert_eq!(third.0, 429, "{}", third.1);
    assert!(
        third.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server.max_waits_per_key"),
        "{}",
        third.1
    );
    // Once they ended, the key may wait again.
    let again = server
        .send(
            ADMIN_KEY,
            reqwest::Method::GET,
            &format!("/v1/tasks/{}?wait=0.1", task.id),
            None,
        )
        .await;
    assert_eq!(again.0, 200);
    server.stop().await;
}
