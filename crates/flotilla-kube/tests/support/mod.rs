//! A scripted Kubernetes API server for the provisioner's tests: a `tower_test` mock service
//! behind `kube::Client::new` (the pattern of kube-rs/controller-rs's `fixtures.rs`) that records
//! each request and answers it from a script.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::future::Future;

use flotilla_kube::KubeProvisioner;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower_test::mock::{self, Handle};

pub const NS: &str = "agents";

pub type ApiServer = Handle<Request<Body>, Response<Body>>;

/// One request as the API server saw it.
#[derive(Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub uri: String,
    pub content_type: Option<String>,
    pub body: Value,
}

/// What the scripted API server answers to one request.
pub struct Reply {
    status: StatusCode,
    body: Value,
}

pub fn ok(body: Value) -> Reply {
    Reply {
        status: StatusCode::OK,
        body,
    }
}

pub fn status_reply(code: u16, reason: &str, message: &str) -> Reply {
    Reply {
        status: StatusCode::from_u16(code).unwrap(),
        body: json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }),
    }
}

pub fn not_found(resource: &str, name: &str) -> Reply {
    status_reply(404, "NotFound", &format!("{resource} \"{name}\" not found"))
}

pub fn setup() -> (KubeProvisioner, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    (KubeProvisioner::with_client(client, NS.to_owned()), handle)
}

/// Runs `call` while the scripted API server answers the requests it receives, in turn, with
/// `replies`; returns the call's result and the requests seen. A request beyond the script fails
/// the test, and so does a call that ends before it has made every scripted request.
pub async fn scripted<T>(
    mut server: ApiServer,
    call: impl Future<Output = T>,
    replies: Vec<Reply>,
) -> (T, Vec<Seen>) {
    let done = Notify::new();
    let call = async {
        let result = call.await;
        done.notify_one();
        result
    };
    let serve = async {
        let mut replies = replies.into_iter();
        let mut seen = Vec::new();
        loop {
            let next = tokio::select! {
                next = server.next_request() => next,
                () = done.notified() => break,
            };
            let Some((request, send)) = next else {
                break;
            };
            let request = read(request).await;
            let Some(reply) = replies.next() else {
                panic!("unscripted request: {} {}", request.method, request.uri);
            };
            seen.push(request);
            let response = Response::builder()
                .status(reply.status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&reply.body).unwrap()))
                .unwrap();
            send.send_response(response);
        }
        let unused = replies.count();
        assert_eq!(
            unused, 0,
            "the call ended {unused} request(s) early; it sent {seen:#?}"
        );
        seen
    };
    tokio::join!(call, serve)
}

async fn read(request: Request<Body>) -> Seen {
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("request body is not JSON ({e}): {bytes:?}"))
    };
    Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        uri: parts.uri.to_string(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned()),
        body,
    }
}
