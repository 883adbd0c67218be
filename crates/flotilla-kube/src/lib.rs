//! The `kubernetes` provisioner of Flotilla: each agent pool runs as one Deployment (and, when
//! it has secret environment, one Secret) in the control plane's namespace, created, scaled,
//! read and deleted through the Kubernetes API.
//!
//! - [`pool`]: what the control plane asks for ([`PoolDeployment`]), names, labels, validation.
//! - [`manifest`]: the objects of a pool, as pure functions ([`deployment`], [`pool_secret`]).
//! - [`provisioner`]: the client side ([`KubeProvisioner`]): server-side apply, scale, status,
//!   delete.
//! - [`error`]: [`KubeError`], worded for the operator.
//!
//! Architecture invariant: this is the only crate of the workspace that depends on `kube` and
//! `k8s-openapi`. It decides nothing about how many agents a pool needs; the control plane's
//! autoscaler does, and calls [`KubeProvisioner::scale`]. See `docs/kubernetes.md`.

pub mod error;
pub mod manifest;
pub mod pool;
pub mod provisioner;

pub use error::KubeError;
pub use manifest::{deployment, pool_secret};
pub use pool::{DEFAULT_PORT, FIELD_MANAGER, PoolDeployment, Resources};
pub use provisioner::{KubeProvisioner, KubeSettings, PoolStatus};
