//! The provisioner against a real cluster. Ignored by default: this machine has no Kubernetes
//! API server. Run it against a throw-away cluster (kind or k3d) as docs/kubernetes.md explains:
//!
//! ```sh
//! kind create cluster --name flotilla-test
//! kubectl create namespace flotilla-test
//! kubectl -n flotilla-test create secret generic flotilla-agent-key --from-literal=key=test
//! KUBECONFIG=~/.kube/config FLOTILLA_KUBE_NAMESPACE=flotilla-test \
//!     cargo nextest run -p flotilla-kube --run-ignored only
//! ```
//!
//! The pods need not become ready (the image need not exist): the test checks what the API
//! server stores, not the agents.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_kube::{KubeProvisioner, KubeSettings, PoolDeployment};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

#[tokio::test]
#[ignore = "needs a live Kubernetes cluster (KUBECONFIG); see docs/kubernetes.md"]
async fn apply_scale_status_delete_on_a_live_cluster() {
    let namespace =
        std::env::var("FLOTILLA_KUBE_NAMESPACE").unwrap_or_else(|_| "flotilla-test".to_owned());
    let settings = KubeSettings {
        namespace: namespace.clone(),
        kubeconfig: std::env::var_os("KUBECONFIG").map(Into::into),
        context: std::env::var("FLOTILLA_KUBE_CONTEXT").ok(),
    };
    let provisioner = KubeProvisioner::connect(&settings).await.unwrap();
    let pool = "live_test";
    let spec = PoolDeployment {
        pool: pool.to_owned(),
        image: std::env::var("FLOTILLA_KUBE_IMAGE")
            .unwrap_or_else(|_| "ghcr.io/example/flotilla:0.1.0".to_owned()),
        replicas: 1,
        control_plane_url: "http://flotilla.invalid:8080".to_owned(),
        key_secret: "flotilla-agent-key".to_owned(),
        secret_env: BTreeMap::from([("EXAMPLE_TOKEN".to_owned(), "live-test".to_owned())]),
        ..PoolDeployment::default()
    };

    provisioner.delete(pool).await.unwrap();
    provisioner.apply(&spec).await.unwrap();
    // Applying the same spec again is a no-op, not a conflict.
    provisioner.apply(&spec).await.unwrap();

    let status = provisioner.status(pool).await.unwrap().unwrap();
    assert_eq!(status.desired, 1);

    provisioner.scale(pool, 2).await.unwrap();
    let status = provisioner.status(pool).await.unwrap().unwrap();
    assert_eq!(status.desired, 2);
    assert!(status.ready <= 2 && status.available <= 2, "{status:?}");

    // What the API server stored, read back with a separate client.
    let client = direct_client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let stored = deployments.get("flotilla-agent-live-test").await.unwrap();
    let labels = stored.metadata.labels.unwrap();
    assert_eq!(labels["flotilla.dev/agent-type"], "live_test");
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let secret = secrets.get("flotilla-pool-live-test").await.unwrap();
    assert_eq!(secret.data.unwrap()["EXAMPLE_TOKEN"].0, b"live-test");

    provisioner.delete(pool).await.unwrap();
    // The Deployment is gone at once (background propagation deletes its pods afterwards).
    let mut gone = false;
    for _ in 0..30 {
        if provisioner.status(pool).await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(gone, "the Deployment still exists after delete");
    assert!(secrets_gone(&namespace).await);
    // Deleting again is not an error.
    provisioner.delete(pool).await.unwrap();
}

/// A client of its own, on the same kubeconfig and context as the provisioner's.
async fn direct_client() -> kube::Client {
    let options = kube::config::KubeConfigOptions {
        context: std::env::var("FLOTILLA_KUBE_CONTEXT").ok(),
        ..Default::default()
    };
    let config = kube::Config::from_kubeconfig(&options).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn secrets_gone(namespace: &str) -> bool {
    let client = direct_client().await;
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    secrets
        .get_opt("flotilla-pool-live-test")
        .await
        .unwrap()
        .is_none()
}
