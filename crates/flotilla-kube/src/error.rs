//! Errors of the Kubernetes provisioner, worded for the operator who has to fix them.

use std::fmt;
use std::path::PathBuf;

/// What went wrong while provisioning a pool on Kubernetes.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The pool's settings cannot become valid Kubernetes objects; fix the pool configuration.
    #[error("pool `{pool}` cannot be deployed to Kubernetes: {reason}")]
    InvalidSpec {
        /// The pool as configured.
        pool: String,
        /// What is wrong, in the terms of the pool's configuration.
        reason: String,
    },

    /// The pool asks for a namespace other than the one the provisioner manages.
    #[error(
        "pool `{pool}` asks for namespace `{requested}` but the Kubernetes provisioner manages `{managed}`; use a provisioner for that namespace (`KubeProvisioner::for_namespace`)"
    )]
    NamespaceMismatch {
        /// The pool as configured.
        pool: String,
        /// The namespace in the pool's settings.
        requested: String,
        /// The provisioner's namespace.
        managed: String,
    },

    /// The kubeconfig file named in the settings could not be read or used.
    #[error("cannot use kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The file named in the settings.
        path: PathBuf,
        /// Why it could not be used.
        #[source]
        source: Box<kube::config::KubeconfigError>,
    },

    /// Neither an in-cluster service account nor a kubeconfig gave a cluster to talk to.
    #[error(
        "no Kubernetes configuration found: not running in a pod with a service account ({in_cluster}), and no usable kubeconfig (set KUBECONFIG or the provisioner's kubeconfig setting): {source}"
    )]
    NoConfig {
        /// Why the in-cluster configuration was not usable.
        in_cluster: String,
        /// Why the kubeconfig inference failed.
        #[source]
        source: Box<kube::config::InferConfigError>,
    },

    /// The HTTP client for the API server could not be built (TLS settings, proxy, certificates).
    #[error("cannot build a client for the Kubernetes API: {0}")]
    Client(#[source] Box<kube::Error>),

    /// The object to act on does not exist.
    #[error("cannot {op}: it does not exist; apply the pool first")]
    NotFound {
        /// What was being done, to which object.
        op: Operation,
    },

    /// The API server answered with an error status (permissions, validation, conflict, quota).
    #[error("Kubernetes refused to {op}: {message} (HTTP {code} {reason}){}", hint(*code))]
    Api {
        /// What was being done, to which object.
        op: Operation,
        /// HTTP status code.
        code: u16,
        /// Kubernetes' machine-readable reason, e.g. `Forbidden`, `Invalid`.
        reason: Box<str>,
        /// The API server's message.
        message: Box<str>,
    },

    /// The API server could not be reached, or its answer could not be read.
    #[error("cannot {op}: the Kubernetes API did not answer usably: {source}")]
    Transport {
        /// What was being done, to which object.
        op: Operation,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },
}

/// One call to the API server: what was being done to which object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// `apply`, `scale`, `read` or `delete`.
    pub action: &'static str,
    /// Kind of object, e.g. `Deployment`.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}/{}",
            self.action, self.kind, self.namespace, self.name
        )
    }
}

impl KubeError {
    /// True when trying the same call again later may succeed (the API server was unreachable,
    /// overloaded, or another writer got there first); false when someone must change a setting,
    /// a permission or the pool first.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Api { code, .. } => matches!(code, 409 | 429 | 500..=599),
            Self::InvalidSpec { .. }
            | Self::NamespaceMismatch { .. }
            | Self::Kubeconfig { .. }
            | Self::NoConfig { .. }
            | Self::Client(_)
            | Self::NotFound { .. } => false,
        }
    }
}

/// The next step for an operator reading an API error, by status code.
fn hint(code: u16) -> &'static str {
    match code {
        401 => "; the credentials in the kubeconfig or service account token are not accepted",
        403 => {
            "; the control plane's service account lacks a permission: grant the Role in docs/kubernetes.md"
        }
        409 => "; another writer changed the object at the same time, retry",
        422 => "; the object is invalid, check the pool's image, resources and environment",
        _ => "",
    }
}

impl Operation {
    /// The error of this operation from a failed client call.
    pub(crate) fn error(self, error: kube::Error) -> KubeError {
        match error {
            kube::Error::Api(status) if status.is_not_found() => KubeError::NotFound { op: self },
            kube::Error::Api(status) => KubeError::Api {
                op: self,
                code: status.code,
                reason: status.reason.as_str().into(),
                message: status.message.as_str().into(),
            },
            source => KubeError::Transport {
                op: self,
                source: Box::new(source),
            },
        }
    }
}
