//! The provisioner: connects to a cluster and applies, scales, reads and deletes the objects of
//! pools in one namespace. Every call is one or two requests to the API server; nothing is
//! cached and nothing runs in the background, so the control plane's fleet loop stays the only
//! owner of the decision of how many agents a pool has.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

use crate::error::{KubeError, Operation};
use crate::manifest::{deployment, pool_secret};
use crate::pool::{
    FIELD_MANAGER, PoolDeployment, deployment_name, secret_name, validate_pool_name,
};

/// How to reach the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeSettings {
    /// Namespace of the pools' objects; empty means the namespace of the service account (in a
    /// pod) or of the kubeconfig context.
    pub namespace: String,
    /// Kubeconfig file to use. `None`: the in-cluster service account when running in a pod,
    /// else the usual kubeconfig inference (`KUBECONFIG`, then `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    pub context: Option<String>,
}

/// Replica counts of a pool's Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Instances asked for (`spec.replicas`).
    pub desired: i32,
    /// Instances passing their readiness probe.
    pub ready: i32,
    /// Instances ready for at least the Deployment's `minReadySeconds`.
    pub available: i32,
}

/// Provisions pools as Deployments in one namespace.
#[derive(Clone)]
pub struct KubeProvisioner {
    client: Client,
    namespace: String,
}

impl std::fmt::Debug for KubeProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeProvisioner")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeProvisioner {
    /// Connects to the cluster the settings name. Nothing is sent to the API server yet.
    pub async fn connect(settings: &KubeSettings) -> Result<Self, KubeError> {
        let config = load_config(settings).await?;
        let namespace = if settings.namespace.is_empty() {
            config.default_namespace.clone()
        } else {
            settings.namespace.clone()
        };
        let client = Client::try_from(config).map_err(|e| KubeError::Client(Box::new(e)))?;
        tracing::debug!(namespace = %namespace, "Kubernetes provisioner connected.");
        Ok(Self { client, namespace })
    }

    /// A provisioner on a given client, e.g. one whose service is a scripted API server.
    pub fn with_client(client: Client, namespace: String) -> Self {
        Self { client, namespace }
    }

    /// A provisioner for another namespace on the same connection, for pools configured in
    /// different namespaces.
    pub fn for_namespace(&self, namespace: impl Into<String>) -> Self {
        Self {
            client: self.client.clone(),
            namespace: namespace.into(),
        }
    }

    /// The namespace the provisioner manages.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Creates or updates the pool's Secret (when it has secret environment) and then its
    /// Deployment, by server-side apply as field manager `flotilla`, taking over fields that
    /// another manager changed (`force`). The Secret comes first so that new pods find it. A
    /// pool without secret environment gets its Secret deleted after the Deployment stopped
    /// referring to it, so that values removed from the configuration do not linger.
    pub async fn apply(&self, spec: &PoolDeployment) -> Result<(), KubeError> {
        let spec = self.namespaced(spec)?;
        spec.validate()?;
        let params = PatchParams::apply(FIELD_MANAGER).force();

        if let Some(secret) = pool_secret(&spec) {
            let name = spec.secret_name();
            let op = self.op("apply", "Secret", &name);
            self.secrets()
                .patch(&name, &params, &Patch::Apply(&secret))
                .await
                .map_err(|e| op.error(e))?;
        }

        let name = spec.deployment_name();
        let op = self.op("apply", "Deployment", &name);
        self.deployments()
            .patch(&name, &params, &Patch::Apply(&deployment(&spec)))
            .await
            .map_err(|e| op.error(e))?;

        if spec.secret_env.is_empty() {
            let name = spec.secret_name();
            let op = self.op("delete", "Secret", &name);
            let deleted = self.secrets().delete(&name, &DeleteParams::default()).await;
            ignore_not_found(deleted.map(drop)).map_err(|e| op.error(e))?;
        }
        tracing::info!(
            pool = %spec.pool,
            namespace = %self.namespace,
            replicas = spec.replicas,
            "Applied agent pool."
        );
        Ok(())
    }

    /// Sets the number of instances of a pool through the Deployment's `scale` subresource,
    /// changing nothing else. Fails with [`KubeError::NotFound`] if the pool was never applied.
    pub async fn scale(&self, pool: &str, replicas: i32) -> Result<(), KubeError> {
        check_pool(pool)?;
        if replicas < 0 {
            return Err(KubeError::InvalidSpec {
                pool: pool.to_owned(),
                reason: format!("replicas must not be negative (got {replicas})"),
            });
        }
        let name = deployment_name(pool);
        let op = self.op("scale", "Deployment", &name);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(json!({ "spec": { "replicas": replicas } }));
        self.deployments()
            .patch_scale(&name, &params, &patch)
            .await
            .map_err(|e| op.error(e))?;
        tracing::info!(pool, namespace = %self.namespace, replicas, "Scaled agent pool.");
        Ok(())
    }

    /// Replica counts of the pool's Deployment, or `None` if it does not exist.
    pub async fn status(&self, pool: &str) -> Result<Option<PoolStatus>, KubeError> {
        check_pool(pool)?;
        let name = deployment_name(pool);
        let op = self.op("read", "Deployment", &name);
        let found = self
            .deployments()
            .get_opt(&name)
            .await
            .map_err(|e| op.error(e))?;
        Ok(found.map(|d| pool_status(&d)))
    }

    /// Deletes the pool's Deployment (its pods are stopped by the garbage collector, each given
    /// its grace period to drain) and its Secret. Objects already gone are not an error.
    pub async fn delete(&self, pool: &str) -> Result<(), KubeError> {
        check_pool(pool)?;
        let params = DeleteParams::background();

        let name = deployment_name(pool);
        let op = self.op("delete", "Deployment", &name);
        ignore_not_found(self.deployments().delete(&name, &params).await.map(drop))
            .map_err(|e| op.error(e))?;

        let name = secret_name(pool);
        let op = self.op("delete", "Secret", &name);
        ignore_not_found(self.secrets().delete(&name, &params).await.map(drop))
            .map_err(|e| op.error(e))?;

        tracing::info!(pool, namespace = %self.namespace, "Deleted agent pool.");
        Ok(())
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn op(&self, action: &'static str, kind: &'static str, name: &str) -> Operation {
        Operation {
            action,
            kind,
            namespace: self.namespace.clone(),
            name: name.to_owned(),
        }
    }

    /// The spec with the provisioner's namespace filled in; a different namespace is refused,
    /// as scaling, reading and deleting look only in the provisioner's (use
    /// [`Self::for_namespace`] for pools elsewhere).
    fn namespaced(&self, spec: &PoolDeployment) -> Result<PoolDeployment, KubeError> {
        if !spec.namespace.is_empty() && spec.namespace != self.namespace {
            return Err(KubeError::NamespaceMismatch {
                pool: spec.pool.clone(),
                requested: spec.namespace.clone(),
                managed: self.namespace.clone(),
            });
        }
        Ok(PoolDeployment {
            namespace: self.namespace.clone(),
            ..spec.clone()
        })
    }
}

/// Replica counts from a Deployment; a count the API server has not reported yet is 0, and an
/// unset `spec.replicas` is Kubernetes' default of 1.
fn pool_status(deployment: &Deployment) -> PoolStatus {
    let status = deployment.status.as_ref();
    PoolStatus {
        desired: deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1),
        ready: status.and_then(|s| s.ready_replicas).unwrap_or(0),
        available: status.and_then(|s| s.available_replicas).unwrap_or(0),
    }
}

fn check_pool(pool: &str) -> Result<(), KubeError> {
    validate_pool_name(pool).map_err(|reason| KubeError::InvalidSpec {
        pool: pool.to_owned(),
        reason,
    })
}

fn ignore_not_found(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        other => other,
    }
}

/// Explicit kubeconfig file, else the in-cluster service account, else kubeconfig inference.
async fn load_config(settings: &KubeSettings) -> Result<Config, KubeError> {
    let options = KubeConfigOptions {
        context: settings.context.clone(),
        ..KubeConfigOptions::default()
    };
    if let Some(path) = &settings.kubeconfig {
        let kubeconfig_error = |source| KubeError::Kubeconfig {
            path: path.clone(),
            source: Box::new(source),
        };
        let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
        return Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(kubeconfig_error);
    }
    if let Some(context) = &settings.context {
        // A context only means something in a kubeconfig, so skip the in-cluster attempt.
        return Config::from_kubeconfig(&options)
            .await
            .map_err(|source| KubeError::Kubeconfig {
                path: PathBuf::from(format!("(KUBECONFIG or ~/.kube/config, context {context})")),
                source: Box::new(source),
            });
    }
    match Config::incluster() {
        Ok(config) => Ok(config),
        Err(in_cluster) => Config::infer().await.map_err(|source| KubeError::NoConfig {
            in_cluster: in_cluster.to_string(),
            source: Box::new(source),
        }),
    }
}
