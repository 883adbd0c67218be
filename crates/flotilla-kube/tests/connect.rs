//! Connecting from settings: which kubeconfig, context and namespace are used, and the errors an
//! operator sees when they are wrong. Building a client sends nothing, so no cluster is needed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use flotilla_kube::{KubeError, KubeProvisioner, KubeSettings};

const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: dev
clusters:
  - name: dev
    cluster:
      server: https://127.0.0.1:6443
      insecure-skip-tls-verify: true
  - name: staging
    cluster:
      server: https://127.0.0.1:7443
      insecure-skip-tls-verify: true
contexts:
  - name: dev
    context:
      cluster: dev
      user: dev
      namespace: dev-agents
  - name: staging
    context:
      cluster: staging
      user: dev
      namespace: staging-agents
users:
  - name: dev
    user:
      token: not-a-real-token
"#;

fn kubeconfig() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config");
    std::fs::write(&path, KUBECONFIG).unwrap();
    (dir, path)
}

#[tokio::test]
async fn namespace_comes_from_the_current_context_when_not_set() {
    let (_dir, path) = kubeconfig();
    let settings = KubeSettings {
        namespace: String::new(),
        kubeconfig: Some(path),
        context: None,
    };
    let provisioner = KubeProvisioner::connect(&settings).await.unwrap();
    assert_eq!(provisioner.namespace(), "dev-agents");
}

#[tokio::test]
async fn context_and_namespace_settings_win() {
    let (_dir, path) = kubeconfig();
    let settings = KubeSettings {
        namespace: String::new(),
        kubeconfig: Some(path.clone()),
        context: Some("staging".to_owned()),
    };
    let provisioner = KubeProvisioner::connect(&settings).await.unwrap();
    assert_eq!(provisioner.namespace(), "staging-agents");

    let settings = KubeSettings {
        namespace: "flotilla".to_owned(),
        kubeconfig: Some(path),
        context: Some("staging".to_owned()),
    };
    let provisioner = KubeProvisioner::connect(&settings).await.unwrap();
    assert_eq!(provisioner.namespace(), "flotilla");
}

#[tokio::test]
async fn a_missing_kubeconfig_is_named_in_the_error() {
    let settings = KubeSettings {
        namespace: "flotilla".to_owned(),
        kubeconfig: Some(PathBuf::from("/nonexistent/kubeconfig")),
        context: None,
    };
    let err = KubeProvisioner::connect(&settings).await.unwrap_err();
    assert!(matches!(err, KubeError::Kubeconfig { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/kubeconfig"), "{err}");
}

#[tokio::test]
async fn an_unknown_context_is_an_error() {
    let (_dir, path) = kubeconfig();
    let settings = KubeSettings {
        namespace: String::new(),
        kubeconfig: Some(path),
        context: Some("production".to_owned()),
    };
    let err = KubeProvisioner::connect(&settings).await.unwrap_err();
    assert!(matches!(err, KubeError::Kubeconfig { .. }), "{err:?}");
    assert!(err.to_string().contains("production"), "{err}");
}
