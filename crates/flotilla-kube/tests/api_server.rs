//! The provisioner against a scripted API server: each test states the exact requests Kubernetes
//! must receive (method, path, query, content type, body) and answers as a real API server would.
//! The pattern is kube-rs/controller-rs's `fixtures.rs`: a `tower_test` mock service behind
//! `kube::Client::new`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;

use flotilla_kube::{KubeError, PoolDeployment, PoolStatus, Resources};
use http::Method;
use serde_json::{Value, json};
use support::{NS, Seen, not_found, ok, scripted, setup, status_reply};

fn sample() -> PoolDeployment {
    PoolDeployment {
        pool: "code_generator".to_owned(),
        namespace: String::new(),
        image: "ghcr.io/example/flotilla:1.2.3".to_owned(),
        replicas: 2,
        control_plane_url: "http://flotilla.flotilla.svc:8080".to_owned(),
        key_secret: "flotilla-agent-key".to_owned(),
        capacity: 4,
        port: 8000,
        env: BTreeMap::from([("RUST_LOG".to_owned(), "info".to_owned())]),
        secret_env: BTreeMap::from([("OPENAI_API_KEY".to_owned(), "sk-secret".to_owned())]),
        resources: Resources::default(),
        release: "prod".to_owned(),
    }
}

/// A Deployment as the API server returns it, with status.
fn deployment_reply(replicas: i32, ready: Option<i32>, available: Option<i32>) -> Value {
    let mut status = json!({ "observedGeneration": 2, "replicas": replicas });
    if let Some(ready) = ready {
        status["readyReplicas"] = json!(ready);
        status["updatedReplicas"] = json!(ready);
    }
    if let Some(available) = available {
        status["availableReplicas"] = json!(available);
    }
    let mut d = serde_json::to_value(flotilla_kube::deployment(&PoolDeployment {
        namespace: NS.to_owned(),
        replicas,
        ..sample()
    }))
    .unwrap();
    d["metadata"]["uid"] = json!("0b5c2d1e-8f0a-4c53-9b1e-2f6d7c8e9a10");
    d["metadata"]["resourceVersion"] = json!("48213");
    d["metadata"]["generation"] = json!(2);
    d["metadata"]["creationTimestamp"] = json!("2025-01-15T10:00:00Z");
    d["status"] = status;
    d
}

fn assert_apply(seen: &Seen, path: &str) {
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(seen.path, path);
    assert_eq!(
        seen.query,
        BTreeMap::from([
            ("fieldManager".to_owned(), "flotilla".to_owned()),
            ("force".to_owned(), "true".to_owned()),
        ]),
        "query of {}",
        seen.uri
    );
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
}

#[tokio::test]
async fn apply_sends_the_secret_then_the_deployment() {
    let (provisioner, server) = setup();
    let spec = sample();
    let mut secret_back = serde_json::to_value(flotilla_kube::pool_secret(&spec).unwrap()).unwrap();
    secret_back["metadata"]["namespace"] = json!(NS);
    secret_back["metadata"]["resourceVersion"] = json!("48200");
    let (result, seen) = scripted(
        server,
        provisioner.apply(&spec),
        vec![ok(secret_back), ok(deployment_reply(2, None, None))],
    )
    .await;
    result.unwrap();
    assert_eq!(seen.len(), 2);

    let secret = &seen[0];
    assert_apply(
        secret,
        "/api/v1/namespaces/agents/secrets/flotilla-pool-code-generator",
    );
    assert_eq!(
        secret.uri,
        "/api/v1/namespaces/agents/secrets/flotilla-pool-code-generator?&force=true&fieldManager=flotilla"
    );
    assert_eq!(secret.body["apiVersion"], "v1");
    assert_eq!(secret.body["kind"], "Secret");
    assert_eq!(secret.body["metadata"]["namespace"], NS);
    // base64("sk-secret")
    assert_eq!(secret.body["data"]["OPENAI_API_KEY"], "c2stc2VjcmV0");

    let deployment = &seen[1];
    assert_apply(
        deployment,
        "/apis/apps/v1/namespaces/agents/deployments/flotilla-agent-code-generator",
    );
    let body = &deployment.body;
    assert_eq!(body["apiVersion"], "apps/v1");
    assert_eq!(body["kind"], "Deployment");
    assert_eq!(body["metadata"]["name"], "flotilla-agent-code-generator");
    assert_eq!(body["metadata"]["namespace"], NS);
    assert_eq!(
        body["metadata"]["labels"]["flotilla.dev/agent-type"],
        "code_generator"
    );
    assert_eq!(body["spec"]["replicas"], 2);
    assert_eq!(
        body["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "prod"
    );
    let container = &body["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/example/flotilla:1.2.3");
    let env = container["env"].as_array().unwrap();
    let key = env.iter().find(|e| e["name"] == "FLOTILLA_KEY").unwrap();
    assert_eq!(
        key["valueFrom"]["secretKeyRef"],
        json!({ "name": "flotilla-agent-key", "key": "key", "optional": false })
    );
    let openai = env.iter().find(|e| e["name"] == "OPENAI_API_KEY").unwrap();
    assert_eq!(
        openai["valueFrom"]["secretKeyRef"]["name"],
        "flotilla-pool-code-generator"
    );
    assert!(
        !deployment.body.to_string().contains("sk-secret"),
        "a secret value leaked into the Deployment"
    );
}

#[tokio::test]
async fn apply_without_secret_env_removes_a_leftover_secret() {
    let (provisioner, server) = setup();
    let spec = PoolDeployment {
        secret_env: BTreeMap::new(),
        ..sample()
    };
    let (result, seen) = scripted(
        server,
        provisioner.apply(&spec),
        vec![
            ok(deployment_reply(2, None, None)),
            not_found("secrets", "flotilla-pool-code-generator"),
        ],
    )
    .await;
    result.unwrap();
    assert_eq!(seen.len(), 2);
    assert_apply(
        &seen[0],
        "/apis/apps/v1/namespaces/agents/deployments/flotilla-agent-code-generator",
    );
    let env = seen[0].body["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(!env.contains("flotilla-pool-"), "{env}");
    // Only after the Deployment stopped referring to it.
    assert_eq!(seen[1].method, Method::DELETE);
    assert_eq!(
        seen[1].path,
        "/api/v1/namespaces/agents/secrets/flotilla-pool-code-generator"
    );
}

#[tokio::test]
async fn apply_refuses_an_invalid_spec_without_calling_the_api() {
    let (provisioner, server) = setup();
    let spec = PoolDeployment {
        pool: "Code Generator".to_owned(),
        ..sample()
    };
    let (result, seen) = scripted(server, provisioner.apply(&spec), vec![]).await;
    assert!(
        matches!(result, Err(KubeError::InvalidSpec { .. })),
        "{result:?}"
    );
    assert!(seen.is_empty());
}

#[tokio::test]
async fn apply_refuses_another_namespace() {
    let (provisioner, server) = setup();
    let spec = PoolDeployment {
        namespace: "elsewhere".to_owned(),
        ..sample()
    };
    let (result, _) = scripted(server, provisioner.apply(&spec), vec![]).await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, KubeError::NamespaceMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("elsewhere"));
}

#[tokio::test]
async fn another_namespace_goes_through_its_own_provisioner() {
    let (provisioner, server) = setup();
    let elsewhere = provisioner.for_namespace("elsewhere");
    let spec = PoolDeployment {
        namespace: "elsewhere".to_owned(),
        secret_env: BTreeMap::new(),
        ..sample()
    };
    let (result, seen) = scripted(
        server,
        async {
            elsewhere.apply(&spec).await?;
            elsewhere.status("code_generator").await
        },
        vec![
            ok(deployment_reply(2, None, None)),
            not_found("secrets", "flotilla-pool-code-generator"),
            ok(deployment_reply(2, Some(1), Some(1))),
        ],
    )
    .await;
    assert!(result.unwrap().is_some());
    assert_eq!(
        seen[0].path,
        "/apis/apps/v1/namespaces/elsewhere/deployments/flotilla-agent-code-generator"
    );
    assert_eq!(seen[0].body["metadata"]["namespace"], "elsewhere");
    assert_eq!(
        seen[1].path,
        "/api/v1/namespaces/elsewhere/secrets/flotilla-pool-code-generator"
    );
    assert_eq!(seen[2].method, Method::GET);
    assert_eq!(
        seen[2].path,
        "/apis/apps/v1/namespaces/elsewhere/deployments/flotilla-agent-code-generator"
    );
    assert_eq!(provisioner.namespace(), NS);
}

#[tokio::test]
async fn apply_reports_forbidden_with_an_rbac_hint() {
    let (provisioner, server) = setup();
    let (result, seen) = scripted(
        server,
        provisioner.apply(&sample()),
        vec![status_reply(
            403,
            "Forbidden",
            "secrets \"flotilla-pool-code-generator\" is forbidden: User \"system:serviceaccount:agents:flotilla\" cannot patch resource \"secrets\" in API group \"\" in the namespace \"agents\"",
        )],
    )
    .await;
    assert_eq!(
        seen.len(),
        1,
        "the Deployment must not be applied after the Secret failed"
    );
    let err = result.unwrap_err();
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(
        matches!(&err, KubeError::Api { code: 403, op, .. } if op.kind == "Secret" && op.action == "apply"),
        "{err:?}"
    );
    assert!(
        message.contains("agents/flotilla-pool-code-generator"),
        "{message}"
    );
    assert!(message.contains("docs/kubernetes.md"), "{message}");
}

#[tokio::test]
async fn scale_patches_only_the_replicas_of_the_scale_subresource() {
    let (provisioner, server) = setup();
    let scale_back = json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": "flotilla-agent-code-generator",
            "namespace": NS,
            "uid": "0b5c2d1e-8f0a-4c53-9b1e-2f6d7c8e9a10",
            "resourceVersion": "48250",
            "creationTimestamp": "2025-01-15T10:00:00Z"
        },
        "spec": { "replicas": 5 },
        "status": {
            "replicas": 2,
            "selector": "app.kubernetes.io/instance=prod,app.kubernetes.io/name=flotilla-agent,flotilla.dev/agent-type=code_generator"
        }
    });
    let (result, seen) = scripted(
        server,
        provisioner.scale("code_generator", 5),
        vec![ok(scale_back)],
    )
    .await;
    result.unwrap();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, Method::PATCH);
    assert_eq!(
        s.path,
        "/apis/apps/v1/namespaces/agents/deployments/flotilla-agent-code-generator/scale"
    );
    assert_eq!(
        s.query,
        BTreeMap::from([("fieldManager".to_owned(), "flotilla".to_owned())])
    );
    assert_eq!(
        s.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(s.body, json!({ "spec": { "replicas": 5 } }));
}

#[tokio::test]
async fn scale_of_a_missing_pool_is_not_found() {
    let (provisioner, server) = setup();
    let (result, _) = scripted(
        server,
        provisioner.scale("code_generator", 1),
        vec![not_found(
            "deployments.apps",
            "flotilla-agent-code-generator",
        )],
    )
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, KubeError::NotFound { op } if op.kind == "Deployment" && op.name == "flotilla-agent-code-generator"),
        "{err:?}"
    );
}

#[tokio::test]
async fn scale_refuses_negative_replicas() {
    let (provisioner, server) = setup();
    let (result, seen) = scripted(server, provisioner.scale("code_generator", -1), vec![]).await;
    assert!(matches!(result, Err(KubeError::InvalidSpec { .. })));
    assert!(seen.is_empty());
}

#[tokio::test]
async fn status_reads_the_deployment() {
    let (provisioner, server) = setup();
    let (result, seen) = scripted(
        server,
        provisioner.status("code_generator"),
        vec![ok(deployment_reply(3, Some(2), Some(1)))],
    )
    .await;
    assert_eq!(
        result.unwrap(),
        Some(PoolStatus {
            desired: 3,
            ready: 2,
            available: 1
        })
    );
    assert_eq!(seen[0].method, Method::GET);
    assert_eq!(
        seen[0].path,
        "/apis/apps/v1/namespaces/agents/deployments/flotilla-agent-code-generator"
    );
    assert!(seen[0].query.is_empty(), "{}", seen[0].uri);
}

#[tokio::test]
async fn status_of_a_new_deployment_counts_missing_fields_as_zero() {
    let (provisioner, server) = setup();
    let (result, _) = scripted(
        server,
        provisioner.status("code_generator"),
        vec![ok(deployment_reply(2, None, None))],
    )
    .await;
    assert_eq!(
        result.unwrap(),
        Some(PoolStatus {
            desired: 2,
            ready: 0,
            available: 0
        })
    );
}

#[tokio::test]
async fn status_of_a_missing_pool_is_none() {
    let (provisioner, server) = setup();
    let (result, _) = scripted(
        server,
        provisioner.status("code_generator"),
        vec![not_found(
            "deployments.apps",
            "flotilla-agent-code-generator",
        )],
    )
    .await;
    assert_eq!(result.unwrap(), None);
}

#[tokio::test]
async fn status_reports_server_errors_as_transient() {
    let (provisioner, server) = setup();
    let (result, _) = scripted(
        server,
        provisioner.status("code_generator"),
        vec![status_reply(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        )],
    )
    .await;
    let err = result.unwrap_err();
    assert!(matches!(err, KubeError::Api { code: 503, .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn transport_failures_are_transient() {
    let (provisioner, mut server) = setup();
    let serve = async {
        let (_, send) = server.next_request().await.unwrap();
        send.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
    };
    let (result, ()) = tokio::join!(provisioner.status("code_generator"), serve);
    let err = result.unwrap_err();
    assert!(matches!(err, KubeError::Transport { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(
        err.to_string()
            .contains("agents/flotilla-agent-code-generator")
    );
}

#[tokio::test]
async fn delete_removes_the_deployment_and_the_secret() {
    let (provisioner, server) = setup();
    let deleted = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": { "name": "flotilla-pool-code-generator", "kind": "secrets", "uid": "5d0e6c3a-1b2f-4e7d-8c9a-0f1e2d3c4b5a" }
    });
    let (result, seen) = scripted(
        server,
        provisioner.delete("code_generator"),
        vec![ok(deployment_reply(2, Some(2), Some(2))), ok(deleted)],
    )
    .await;
    result.unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, Method::DELETE);
    assert_eq!(
        seen[0].path,
        "/apis/apps/v1/namespaces/agents/deployments/flotilla-agent-code-generator"
    );
    assert_eq!(seen[0].body["propagationPolicy"], "Background");
    assert_eq!(seen[1].method, Method::DELETE);
    assert_eq!(
        seen[1].path,
        "/api/v1/namespaces/agents/secrets/flotilla-pool-code-generator"
    );
}

#[tokio::test]
async fn delete_of_a_missing_pool_is_not_an_error() {
    let (provisioner, server) = setup();
    let (result, seen) = scripted(
        server,
        provisioner.delete("code_generator"),
        vec![
            not_found("deployments.apps", "flotilla-agent-code-generator"),
            not_found("secrets", "flotilla-pool-code-generator"),
        ],
    )
    .await;
    result.unwrap();
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn delete_reports_other_errors() {
    let (provisioner, server) = setup();
    let (result, seen) = scripted(
        server,
        provisioner.delete("code_generator"),
        vec![status_reply(
            403,
            "Forbidden",
            "deployments.apps \"flotilla-agent-code-generator\" is forbidden",
        )],
    )
    .await;
    assert_eq!(seen.len(), 1);
    assert!(
        matches!(&result, Err(KubeError::Api { code: 403, op, .. }) if op.action == "delete"),
        "{result:?}"
    );
}
