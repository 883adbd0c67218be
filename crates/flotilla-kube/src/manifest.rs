//! The Kubernetes objects of one pool: its Deployment and, when it has secret environment, its
//! Secret. Pure functions of a [`PoolDeployment`]; the provisioner applies what they return.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::pool::{CONTAINER_NAME, KEY_SECRET_KEY, PoolDeployment};

/// Name of the container port, used by the probes.
const PORT_NAME: &str = "http";

/// User and group the agent runs as: not root, and not a user the image is likely to define.
const RUN_AS_USER: i64 = 1000;
const FS_GROUP: i64 = 2000;

/// Seconds Kubernetes waits after SIGTERM before killing an agent. The agent drains in-flight
/// tasks on SIGTERM (30 s by default) and then deregisters, so this leaves it room to finish.
const TERMINATION_GRACE_SECONDS: i64 = 45;

/// The Deployment running the pool's agents.
pub fn deployment(spec: &PoolDeployment) -> Deployment {
    let labels = spec.labels();
    Deployment {
        metadata: metadata(spec, spec.deployment_name(), labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(spec.selector_labels()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(spec)),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The Secret holding the pool's secret environment, or `None` when it has none.
pub fn pool_secret(spec: &PoolDeployment) -> Option<Secret> {
    if spec.secret_env.is_empty() {
        return None;
    }
    // `data` rather than `stringData`: with server-side apply, Flotilla then owns each key, so a
    // key removed from the pool is removed from the Secret too.
    let data = spec
        .secret_env
        .iter()
        .map(|(name, value)| (name.clone(), ByteString(value.clone().into_bytes())))
        .collect();
    Some(Secret {
        metadata: metadata(spec, spec.secret_name(), spec.labels()),
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    })
}

fn metadata(spec: &PoolDeployment, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: (!spec.namespace.is_empty()).then(|| spec.namespace.clone()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

fn pod_spec(spec: &PoolDeployment) -> PodSpec {
    PodSpec {
        // Agents talk to the control plane, never to the Kubernetes API.
        automount_service_account_token: Some(false),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            fs_group: Some(FS_GROUP),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container(spec)],
        volumes: Some(vec![Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    }
}

fn container(spec: &PoolDeployment) -> Container {
    let probe = |initial_delay, period, failures| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/health".to_owned()),
            port: IntOrString::String(PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(spec.image.clone()),
        args: Some(args(spec)),
        env: Some(env(spec)),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_owned()),
            container_port: i32::from(spec.port),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe(10, 10, 3)),
        readiness_probe: Some(probe(2, 5, 2)),
        resources: Some(resources(spec)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

/// Arguments of the image's `flotilla` entrypoint. The control plane URL, the advertised URL
/// and the key reach the agent through the environment (`FLOTILLA_CONTROL_PLANE`,
/// `FLOTILLA_ADVERTISE_URL`, `FLOTILLA_KEY`), which `flotilla agent` reads.
fn args(spec: &PoolDeployment) -> Vec<String> {
    vec![
        "agent".to_owned(),
        "--type".to_owned(),
        spec.pool.clone(),
        "--listen".to_owned(),
        format!("0.0.0.0:{}", spec.port),
        "--capacity".to_owned(),
        spec.capacity.to_string(),
    ]
}

fn env(spec: &PoolDeployment) -> Vec<EnvVar> {
    let plain = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    };
    let from_secret = |name: &str, secret: String, key: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    // Order matters: Kubernetes expands `$(POD_IP)` only from variables defined before it.
    let mut env = vec![
        plain("AGENT_TYPE", spec.pool.clone()),
        plain("FLOTILLA_CONTROL_PLANE", spec.control_plane_url.clone()),
        from_secret("FLOTILLA_KEY", spec.key_secret.clone(), KEY_SECRET_KEY),
        EnvVar {
            name: "POD_IP".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".to_owned()),
                    field_path: "status.podIP".to_owned(),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        plain(
            "FLOTILLA_ADVERTISE_URL",
            format!("http://$(POD_IP):{}", spec.port),
        ),
    ];
    env.extend(
        spec.env
            .iter()
            .map(|(name, value)| plain(name, value.clone())),
    );
    let secret = spec.secret_name();
    env.extend(
        spec.secret_env
            .keys()
            .map(|name| from_secret(name, secret.clone(), name)),
    );
    env
}

fn resources(spec: &PoolDeployment) -> ResourceRequirements {
    let r = &spec.resources;
    let pair = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(pair(&r.cpu_request, &r.memory_request)),
        limits: Some(pair(&r.cpu_limit, &r.memory_limit)),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests;
