//! The kubernetes provisioner wired into the autoscaler, against a scripted Kubernetes API server
//! (a local HTTP server named in a kubeconfig): the pool's minimum is applied as a Deployment
//! with server-side apply, and a queue scales it through the `scale` subresource. The exact
//! requests of each call are tested in flotilla-kube; this checks that decisions reach them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use flotilla_core::wire::SubmitTask;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Backend, Settings, TestServer, eventually};

type Seen = Arc<Mutex<Vec<(Method, String, Value)>>>;

async fn api(State(seen): State<Seen>, method: Method, uri: Uri, body: Bytes) -> impl IntoResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock()
        .unwrap()
        .push((method.clone(), uri.path().to_owned(), body.clone()));
    let path = uri.path();
    if method == Method::PATCH && path.ends_with("/scale") {
        let replicas = body["spec"]["replicas"].clone();
        let scale = json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": "flotilla-agent-k8s-pool", "namespace": "flotilla-test"},
            "spec": {"replicas": replicas}});
        return (StatusCode::OK, axum::Json(scale)).into_response();
    }
    if method == Method::PATCH && path.contains("/deployments/") {
        return (StatusCode::OK, axum::Json(body)).into_response();
    }
    let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": "not found"});
    (StatusCode::NOT_FOUND, axum::Json(status)).into_response()
}

fn replicas_set(seen: &Seen) -> Vec<i64> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(m, _, _)| m == Method::PATCH)
        .filter_map(|(_, path, body)| {
            let replicas = body["spec"]["replicas"].as_i64()?;
            path.contains("flotilla-agent-k8s-pool").then_some(replicas)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_decisions_reach_the_kubernetes_api() {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(api).with_state(seen.clone());
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
    let pool = format!(
        "provisioner = \"kubernetes\"\nmin_instances = 1\nmax_instances = 3\ncapacity = 2\n\
         [pools.autoscale]\nscale_up_delay_s = 1\ncooldown_s = 1\n\
         [pools.kubernetes]\nimage = \"ghcr.io/example/flotilla:1\"\nnamespace = \"flotilla-test\"\n\
         kubeconfig = {:?}\n",
        kubeconfig.display().to_string()
    );
    let settings = Settings::default()
        .set("fleet.autoscale_interval_ms", 200)
        .raw(&format!("[[pools]]\nname = \"k8s_pool\"\n{pool}"));
    let server = TestServer::start(Backend::Sqlite, settings).await;

    eventually(
        "the Deployment is applied with the minimum",
        Duration::from_secs(10),
        || async { replicas_set(&seen) == [1] },
    )
    .await;
    {
        let seen = seen.lock().unwrap();
        let (_, path, body) = &seen[0];
        assert_eq!(
            path,
            "/apis/apps/v1/namespaces/flotilla-test/deployments/flotilla-agent-k8s-pool"
        );
        assert_eq!(body["kind"], "Deployment");
        let container = &body["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "ghcr.io/example/flotilla:1");
        assert_eq!(
            body["metadata"]["labels"]["flotilla.dev/agent-type"],
            "k8s_pool"
        );
    }

    // No agent registers (there is no cluster), so submitted work queues: 1 → 3.
    for _ in 0..12 {
        server.submit(&SubmitTask::new("k8s_pool", json!({}))).await;
    }
    eventually(
        "the pool is scaled up through /scale",
        Duration::from_secs(10),
        || async { replicas_set(&seen).last() == Some(&3) },
    )
    .await;
    let seen_paths: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, p, _)| p.clone())
        .collect();
    assert!(
        seen_paths.iter().any(|p| p
            == "/apis/apps/v1/namespaces/flotilla-test/deployments/flotilla-agent-k8s-pool/scale"),
        "{seen_paths:?}"
    );
    // Events are written in batches a few times a second.
    eventually(
        "the decision and its outcome are events",
        Duration::from_secs(5),
        || async {
            let events = server
                .client
                .list_events(&[("agent_type", "k8s_pool".to_owned())])
                .await
                .unwrap()
                .events;
            let messages: Vec<_> = events.iter().map(|e| e.message.as_str()).collect();
            messages.iter().any(|m| m.starts_with("pool k8s_pool 1 → 3: "))
            && messages.contains(
                &"deployment flotilla-agent-k8s-pool in namespace flotilla-test set to 3 replicas",
            )
        },
    )
    .await;
    server.stop().await;
}
