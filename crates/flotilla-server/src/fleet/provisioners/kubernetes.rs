//! The `kubernetes` provisioner's shell: connects lazily (kubeconfig inference or in-cluster),
//! applies each pool's Deployment on its first decision and patches replicas afterwards, and
//! reports failures as fleet events rather than failing the control plane.

use flotilla_core::config::{KubernetesSection, Pool};
use flotilla_core::event::EventKind;
use flotilla_kube::{KubeProvisioner, KubeSettings, PoolDeployment, Resources};
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Connections by (namespace, kubeconfig, context), and the replicas last set per pool.
#[derive(Default)]
pub(super) struct Kubernetes {
    clients: Mutex<HashMap<String, Arc<OnceCell<KubeProvisioner>>>>,
    /// Pools whose Deployment was applied, with the replicas asked for.
    desired: Arc<Mutex<HashMap<String, u32>>>,
}

impl Kubernetes {
    /// The replicas last asked for, once the Deployment exists.
    pub(super) fn size(&self, pool: &str) -> Option<u32> {
        self.desired.lock().ok()?.get(pool).copied()
    }

    fn client_cell(&self, namespace: &str) -> Arc<OnceCell<KubeProvisioner>> {
        self.clients
            .lock()
            .map(|mut c| c.entry(namespace.to_owned()).or_default().clone())
            .unwrap_or_default()
    }

    /// The work of bringing `pool` to `to` replicas.
    pub(super) fn scale(
        &self,
        pool: &Pool,
        settings: &KubernetesSection,
        to: u32,
        vault: &Arc<crate::vault::Vault>,
        events: crate::fleet::events::EventSink,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> impl Future<Output = ()> + use<> {
        let cell = self.client_cell(&format!(
            "{}\u{0}{}\u{0}{}",
            settings.namespace, settings.kubeconfig, settings.context
        ));
        let connect = KubeSettings {
            namespace: settings.namespace.clone(),
            kubeconfig: (!settings.kubeconfig.is_empty())
                .then(|| std::path::PathBuf::from(&settings.kubeconfig)),
            context: (!settings.context.is_empty()).then(|| settings.context.clone()),
        };
        let desired = self.desired.clone();
        let applied = self.size(&pool.name).is_some();
        let (mut spec, secrets) = deployment_spec(pool, settings, to, vault);
        async move {
            let settings = connect;
            let result = async {
                // `secret://` values go into the pool's Secret (referenced by the Deployment),
                // read from the vault when the Deployment is applied.
                if !applied && let Some(secrets) = &secrets {
                    let resolved = secrets.resolve().await.map_err(|reason| {
                        flotilla_kube::KubeError::InvalidSpec {
                            pool: spec.pool.clone(),
                            reason,
                        }
                    })?;
                    spec.secret_env.extend(
                        resolved
                            .into_iter()
                            .map(|(name, value)| (name, value.expose_secret().to_owned())),
                    );
                }
                let client = cell
                    .get_or_try_init(|| KubeProvisioner::connect(&settings))
                    .await?;
                if applied {
                    client.scale(&spec.pool, spec.replicas).await
                } else {
                    client.apply(&spec).await
                }
            }
            .await;
            let now = clock.now();
            match result {
                Ok(()) => {
                    if let Ok(mut d) = desired.lock() {
                        d.insert(spec.pool.clone(), to);
                    }
                    let message = format!(
                        "deployment {} in namespace {} set to {to} replicas",
                        spec.deployment_name(),
                        spec.namespace
                    );
                    events.emit(now, EventKind::Provisioner, &spec.pool, None, None, message);
                }
                Err(e) => events.emit(
                    now,
                    EventKind::Provisioner,
                    &spec.pool,
                    None,
                    None,
                    format!("kubernetes: could not set {to} replicas: {e}"),
                ),
            }
        }
    }
}

/// What the pool's Deployment should be, and the `secret://` variables still to resolve.
fn deployment_spec(
    pool: &Pool,
    k: &KubernetesSection,
    replicas: u32,
    vault: &Arc<crate::vault::Vault>,
) -> (PoolDeployment, Option<crate::vault::EnvSecrets>) {
    let (env, secrets) = crate::vault::EnvSecrets::split(vault, &pool.env);
    let spec = PoolDeployment {
        pool: pool.name.clone(),
        namespace: k.namespace.clone(),
        image: k.image.clone(),
        replicas: i32::try_from(replicas).unwrap_or(i32::MAX),
        control_plane_url: k.control_plane_url.clone(),
        key_secret: k.key_secret.clone(),
        capacity: pool.capacity,
        port: k.port,
        env: env.into_iter().collect(),
        secret_env: Default::default(),
        resources: Resources {
            cpu_request: k.cpu_request.clone(),
            memory_request: k.memory_request.clone(),
            cpu_limit: k.cpu_limit.clone(),
            memory_limit: k.memory_limit.clone(),
        },
        release: "flotilla".to_owned(),
    };
    (spec, secrets)
}
