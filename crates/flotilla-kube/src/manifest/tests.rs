#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};

use super::*;
use crate::pool::Resources;

fn sample() -> PoolDeployment {
    PoolDeployment {
        pool: "code_generator".to_owned(),
        namespace: "agents".to_owned(),
        image: "ghcr.io/example/flotilla:1.2.3".to_owned(),
        replicas: 3,
        control_plane_url: "http://flotilla.flotilla.svc:8080".to_owned(),
        key_secret: "flotilla-agent-key".to_owned(),
        capacity: 8,
        port: 8000,
        env: BTreeMap::from([("RUST_LOG".to_owned(), "info".to_owned())]),
        secret_env: BTreeMap::from([
            ("GITHUB_TOKEN".to_owned(), "ghp_secret".to_owned()),
            ("OPENAI_API_KEY".to_owned(), "sk-secret".to_owned()),
        ]),
        resources: Resources::default(),
        release: "prod".to_owned(),
    }
}

fn pod(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn agent(d: &Deployment) -> &Container {
    let containers = &pod(d).containers;
    assert_eq!(containers.len(), 1);
    &containers[0]
}

fn env_var<'a>(c: &'a Container, name: &str) -> &'a EnvVar {
    c.env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no env var {name}"))
}

fn secret_ref(var: &EnvVar) -> (&str, &str) {
    let r = var
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .unwrap_or_else(|| panic!("{} is not from a secret", var.name));
    assert_eq!(
        var.value, None,
        "{} has both a value and a source",
        var.name
    );
    (r.name.as_str(), r.key.as_str())
}

#[test]
fn names_labels_and_selector() {
    let d = deployment(&sample());
    assert_eq!(
        d.metadata.name.as_deref(),
        Some("flotilla-agent-code-generator")
    );
    assert_eq!(d.metadata.namespace.as_deref(), Some("agents"));

    let labels = d.metadata.labels.as_ref().unwrap();
    let expected = BTreeMap::from([
        ("app.kubernetes.io/name", "flotilla-agent"),
        ("app.kubernetes.io/instance", "prod"),
        ("app.kubernetes.io/component", "agent"),
        ("app.kubernetes.io/managed-by", "flotilla"),
        ("flotilla.dev/agent-type", "code_generator"),
    ]);
    let actual: BTreeMap<&str, &str> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(actual, expected);

    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let selector = spec.selector.match_labels.as_ref().unwrap();
    assert_eq!(
        selector.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "app.kubernetes.io/instance",
            "app.kubernetes.io/name",
            "flotilla.dev/agent-type"
        ]
    );
    assert!(spec.selector.match_expressions.is_none());
    // The API server refuses a Deployment whose selector does not match its pod template.
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (k, v) in selector {
        assert_eq!(template_labels.get(k), Some(v), "template lacks {k}");
    }
    assert_eq!(template_labels, labels);
}

#[test]
fn selector_is_stable_across_changes_that_are_not_the_pool_or_release() {
    // A Deployment's selector is immutable: image, scale or env changes must not touch it.
    let a = deployment(&sample());
    let mut changed = sample();
    changed.image = "other:2".to_owned();
    changed.replicas = 9;
    changed.env.insert("X".to_owned(), "y".to_owned());
    let b = deployment(&changed);
    assert_eq!(
        a.spec.unwrap().selector,
        b.spec.unwrap().selector,
        "selector changed"
    );
}

#[test]
fn container_runs_the_agent_command() {
    let d = deployment(&sample());
    let c = agent(&d);
    assert_eq!(c.name, "agent");
    assert_eq!(c.image.as_deref(), Some("ghcr.io/example/flotilla:1.2.3"));
    assert!(c.command.is_none(), "the image's entrypoint is flotilla");
    assert_eq!(
        c.args.as_deref().unwrap(),
        [
            "agent",
            "--type",
            "code_generator",
            "--listen",
            "0.0.0.0:8000",
            "--capacity",
            "8"
        ]
    );
    let ports = c.ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("http"));
    assert_eq!(ports[0].container_port, 8000);
}

#[test]
fn port_follows_the_spec() {
    let mut spec = sample();
    spec.port = 9100;
    let d = deployment(&spec);
    let c = agent(&d);
    assert!(
        c.args
            .as_ref()
            .unwrap()
            .contains(&"0.0.0.0:9100".to_owned())
    );
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 9100);
    assert_eq!(
        env_var(c, "FLOTILLA_ADVERTISE_URL").value.as_deref(),
        Some("http://$(POD_IP):9100")
    );
}

#[test]
fn environment_and_secret_references() {
    let d = deployment(&sample());
    let c = agent(&d);
    assert_eq!(
        env_var(c, "AGENT_TYPE").value.as_deref(),
        Some("code_generator")
    );
    assert_eq!(
        env_var(c, "FLOTILLA_CONTROL_PLANE").value.as_deref(),
        Some("http://flotilla.flotilla.svc:8080")
    );
    assert_eq!(
        secret_ref(env_var(c, "FLOTILLA_KEY")),
        ("flotilla-agent-key", "key")
    );

    let pod_ip = env_var(c, "POD_IP");
    let field = pod_ip
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "status.podIP");
    assert_eq!(
        env_var(c, "FLOTILLA_ADVERTISE_URL").value.as_deref(),
        Some("http://$(POD_IP):8000")
    );

    // $(POD_IP) only expands from variables defined earlier in the list.
    let names: Vec<&str> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let position = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(position("POD_IP") < position("FLOTILLA_ADVERTISE_URL"));

    assert_eq!(env_var(c, "RUST_LOG").value.as_deref(), Some("info"));
    assert_eq!(
        secret_ref(env_var(c, "OPENAI_API_KEY")),
        ("flotilla-pool-code-generator", "OPENAI_API_KEY")
    );
    assert_eq!(
        secret_ref(env_var(c, "GITHUB_TOKEN")),
        ("flotilla-pool-code-generator", "GITHUB_TOKEN")
    );
    // No secret value appears anywhere in the Deployment.
    let json = serde_json::to_string(&d).unwrap();
    assert!(!json.contains("sk-secret") && !json.contains("ghp_secret"));
    // Exactly the pool's environment and what the agent needs: nothing of the control plane's.
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "AGENT_TYPE",
            "FLOTILLA_ADVERTISE_URL",
            "FLOTILLA_CONTROL_PLANE",
            "FLOTILLA_KEY",
            "GITHUB_TOKEN",
            "OPENAI_API_KEY",
            "POD_IP",
            "RUST_LOG",
        ]
    );
    // No `envFrom` (which would import a whole ConfigMap or Secret) and no other container.
    assert!(c.env_from.is_none());
    assert!(pod(&d).init_containers.is_none());
}

#[test]
fn probes_check_health_on_the_named_port() {
    let d = deployment(&sample());
    let c = agent(&d);
    for (which, probe) in [
        ("liveness", c.liveness_probe.as_ref()),
        ("readiness", c.readiness_probe.as_ref()),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("no {which} httpGet probe"));
        assert_eq!(get.path.as_deref(), Some("/health"), "{which}");
        assert_eq!(get.port, IntOrString::String("http".to_owned()), "{which}");
    }
}

#[test]
fn resources_default_and_override() {
    let d = deployment(&sample());
    let r = agent(&d).resources.as_ref().unwrap();
    let q = |m: &Option<BTreeMap<String, Quantity>>, k: &str| m.as_ref().unwrap()[k].0.clone();
    assert_eq!(q(&r.requests, "cpu"), "250m");
    assert_eq!(q(&r.requests, "memory"), "256Mi");
    assert_eq!(q(&r.limits, "cpu"), "1");
    assert_eq!(q(&r.limits, "memory"), "1Gi");

    let mut spec = sample();
    spec.resources.memory_limit = "2Gi".to_owned();
    spec.resources.cpu_request = "500m".to_owned();
    let d = deployment(&spec);
    let r = agent(&d).resources.as_ref().unwrap();
    assert_eq!(q(&r.limits, "memory"), "2Gi");
    assert_eq!(q(&r.requests, "cpu"), "500m");
}

#[test]
fn security_context_is_restricted() {
    let d = deployment(&sample());
    let p = pod(&d);
    assert_eq!(p.automount_service_account_token, Some(false));
    let psc = p.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(1000));
    assert_eq!(psc.fs_group, Some(2000));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );

    let csc = agent(&d).security_context.as_ref().unwrap();
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    assert_eq!(csc.read_only_root_filesystem, Some(true));
    assert_eq!(csc.run_as_non_root, Some(true));
    assert_eq!(csc.privileged, None);
    assert_eq!(
        csc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    assert!(csc.capabilities.as_ref().unwrap().add.is_none());
}

#[test]
fn tmp_is_a_writable_empty_dir() {
    let d = deployment(&sample());
    let volumes = pod(&d).volumes.as_ref().unwrap();
    let mounts = agent(&d).volume_mounts.as_ref().unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].mount_path, "/tmp");
    assert_ne!(mounts[0].read_only, Some(true));
    let volume = volumes.iter().find(|v| v.name == mounts[0].name).unwrap();
    assert!(volume.empty_dir.is_some());
}

#[test]
fn pool_secret_holds_the_secret_environment() {
    let secret = pool_secret(&sample()).unwrap();
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some("flotilla-pool-code-generator")
    );
    assert_eq!(secret.metadata.namespace.as_deref(), Some("agents"));
    assert_eq!(
        secret.metadata.labels.as_ref().unwrap()["flotilla.dev/agent-type"],
        "code_generator"
    );
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let data = secret.data.as_ref().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data["OPENAI_API_KEY"].0, b"sk-secret");
    assert_eq!(data["GITHUB_TOKEN"].0, b"ghp_secret");
    assert!(secret.string_data.is_none());
    // Serialised as Kubernetes expects: base64 under `data`, with apiVersion and kind.
    let json = serde_json::to_value(&secret).unwrap();
    assert_eq!(json["apiVersion"], "v1");
    assert_eq!(json["kind"], "Secret");
    assert_eq!(json["data"]["OPENAI_API_KEY"], "c2stc2VjcmV0");
}

#[test]
fn no_secret_without_secret_environment() {
    let mut spec = sample();
    spec.secret_env.clear();
    assert!(pool_secret(&spec).is_none());
    let d = deployment(&spec);
    let refs: Vec<&str> = agent(&d)
        .env
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(refs, ["flotilla-agent-key"]);
}

#[test]
fn empty_namespace_is_left_to_the_client() {
    let mut spec = sample();
    spec.namespace.clear();
    assert_eq!(deployment(&spec).metadata.namespace, None);
    assert_eq!(pool_secret(&spec).unwrap().metadata.namespace, None);
}

#[test]
fn serialises_with_api_version_and_kind() {
    let json = serde_json::to_value(deployment(&sample())).unwrap();
    assert_eq!(json["apiVersion"], "apps/v1");
    assert_eq!(json["kind"], "Deployment");
    assert!(json.get("status").is_none());
}

#[test]
fn validation_refuses_what_kubernetes_would() {
    assert!(sample().validate().is_ok());
    type Change = Box<dyn Fn(&mut PoolDeployment)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "underscore at start",
            Box::new(|s| s.pool = "_x".to_owned()),
        ),
        ("upper case", Box::new(|s| s.pool = "Code".to_owned())),
        ("no image", Box::new(|s| s.image.clear())),
        ("negative replicas", Box::new(|s| s.replicas = -1)),
        ("zero capacity", Box::new(|s| s.capacity = 0)),
        ("zero port", Box::new(|s| s.port = 0)),
        (
            "bad key secret",
            Box::new(|s| s.key_secret = "Bad_Name".to_owned()),
        ),
        (
            "bad namespace",
            Box::new(|s| s.namespace = "a.b".to_owned()),
        ),
        ("bad release", Box::new(|s| s.release = "-x".to_owned())),
        (
            "bad quantity",
            Box::new(|s| s.resources.memory_limit = "1GB".to_owned()),
        ),
        (
            "reserved env",
            Box::new(|s| {
                s.env.insert("FLOTILLA_KEY".to_owned(), "x".to_owned());
            }),
        ),
        (
            "bad env name",
            Box::new(|s| {
                s.secret_env.insert("1X".to_owned(), "x".to_owned());
            }),
        ),
        (
            "env both plain and secret",
            Box::new(|s| {
                s.env.insert("GITHUB_TOKEN".to_owned(), "x".to_owned());
            }),
        ),
    ];
    for (what, change) in cases {
        let mut spec = sample();
        change(&mut spec);
        let err = spec.validate().expect_err(what);
        assert!(
            matches!(err, crate::KubeError::InvalidSpec { .. }),
            "{what}: {err}"
        );
    }
}
