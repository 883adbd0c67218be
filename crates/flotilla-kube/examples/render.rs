//! Prints the Kubernetes objects of a sample pool as multi-document YAML, for validation against
//! the Kubernetes schemas (`.ci/k8s-validate`) and for reading what the provisioner applies:
//!
//! ```sh
//! cargo run -q -p flotilla-kube --example render > target/k8s-sample.yaml
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;

use flotilla_kube::{PoolDeployment, Resources, deployment, pool_secret};

fn main() -> ExitCode {
    let pool = PoolDeployment {
        pool: "code_generator".to_owned(),
        namespace: "flotilla".to_owned(),
        image: "ghcr.io/example/flotilla:0.1.0".to_owned(),
        replicas: 2,
        control_plane_url: "http://flotilla.flotilla.svc.cluster.local:8080".to_owned(),
        key_secret: "flotilla-agent-key".to_owned(),
        capacity: 4,
        port: flotilla_kube::DEFAULT_PORT,
        env: BTreeMap::from([("RUST_LOG".to_owned(), "info".to_owned())]),
        secret_env: BTreeMap::from([
            ("GITHUB_TOKEN".to_owned(), "example-token".to_owned()),
            ("OPENAI_API_KEY".to_owned(), "example-key".to_owned()),
        ]),
        resources: Resources::default(),
        release: "flotilla".to_owned(),
    };
    if let Err(e) = pool.validate() {
        eprintln!("render: {e}");
        return ExitCode::FAILURE;
    }
    let mut documents = Vec::new();
    if let Some(secret) = pool_secret(&pool) {
        documents.push(serde_json::to_value(secret));
    }
    documents.push(serde_json::to_value(deployment(&pool)));
    let documents: Result<Vec<_>, _> = documents.into_iter().collect();
    let rendered = documents
        .map_err(|e| e.to_string())
        .and_then(|docs| serde_saphyr::to_string_multiple(&docs).map_err(|e| e.to_string()));
    match rendered {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("render: cannot serialise the objects: {e}");
            ExitCode::FAILURE
        }
    }
}
