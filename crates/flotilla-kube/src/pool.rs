//! What the control plane wants running for one pool, the names and labels derived from it, and
//! the checks that keep it within what Kubernetes accepts.
//!
//! Nothing here talks to a cluster: these are plain values and pure functions.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::KubeError;

/// Port the agent listens on when the pool does not say otherwise.
pub const DEFAULT_PORT: u16 = 8000;

/// Field manager of every server-side apply and patch, so that `kubectl` and the API server's
/// managed fields show which fields Flotilla owns.
pub const FIELD_MANAGER: &str = "flotilla";

/// Label carrying the exact agent type (pool), underscores included.
pub const AGENT_TYPE_LABEL: &str = "flotilla.dev/agent-type";

/// Name of the container running the agent.
pub const CONTAINER_NAME: &str = "agent";

/// Key of the agent API key inside the Secret named by [`PoolDeployment::key_secret`].
pub const KEY_SECRET_KEY: &str = "key";

/// Environment variables that Flotilla sets itself; a pool may not override them.
pub const RESERVED_ENV: [&str; 5] = [
    "AGENT_TYPE",
    "FLOTILLA_CONTROL_PLANE",
    "FLOTILLA_KEY",
    "POD_IP",
    "FLOTILLA_ADVERTISE_URL",
];

/// What the control plane wants running for one pool.
#[derive(Clone, PartialEq, Eq)]
pub struct PoolDeployment {
    /// Agent type, e.g. `code_generator` (`a-z`, `0-9`, `_`, `-`). Object names map `_` to `-`;
    /// labels and environment keep the exact type.
    pub pool: String,
    /// Namespace of the Deployment and Secret; empty means the provisioner's namespace.
    pub namespace: String,
    /// Container image whose entrypoint is the `flotilla` binary.
    pub image: String,
    /// Number of agent instances.
    pub replicas: i32,
    /// Base URL of the control plane, as seen from the pods (`FLOTILLA_CONTROL_PLANE`).
    pub control_plane_url: String,
    /// Name of a Secret whose key `key` holds the agent API key (`FLOTILLA_KEY`).
    pub key_secret: String,
    /// Tasks one instance runs at once.
    pub capacity: u32,
    /// Container port the agent listens on.
    pub port: u16,
    /// Plain environment of the pool.
    pub env: BTreeMap<String, String>,
    /// Secret environment of the pool: variable name to value, delivered through the Secret
    /// `flotilla-pool-<name>`. Values are redacted from `Debug`.
    pub secret_env: BTreeMap<String, String>,
    /// CPU and memory requests and limits.
    pub resources: Resources,
    /// Release the pool belongs to (`app.kubernetes.io/instance`).
    pub release: String,
}

/// CPU and memory requests and limits, as Kubernetes quantity strings (`250m`, `1Gi`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// CPU the scheduler reserves for one instance.
    pub cpu_request: String,
    /// Memory the scheduler reserves for one instance.
    pub memory_request: String,
    /// CPU an instance may use at most (throttled above).
    pub cpu_limit: String,
    /// Memory an instance may use at most (killed above).
    pub memory_limit: String,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu_request: "250m".to_owned(),
            memory_request: "256Mi".to_owned(),
            cpu_limit: "1".to_owned(),
            memory_limit: "1Gi".to_owned(),
        }
    }
}

impl Default for PoolDeployment {
    /// A pool of one instance in the provisioner's namespace; `pool`, `image`,
    /// `control_plane_url` and `key_secret` still need values.
    fn default() -> Self {
        Self {
            pool: String::new(),
            namespace: String::new(),
            image: String::new(),
            replicas: 1,
            control_plane_url: String::new(),
            key_secret: String::new(),
            capacity: 4,
            port: DEFAULT_PORT,
            env: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            resources: Resources::default(),
            release: "flotilla".to_owned(),
        }
    }
}

impl fmt::Debug for PoolDeployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secret values must never reach logs; their names are useful and harmless.
        let secret_names: Vec<&str> = self.secret_env.keys().map(String::as_str).collect();
        f.debug_struct("PoolDeployment")
            .field("pool", &self.pool)
            .field("namespace", &self.namespace)
            .field("image", &self.image)
            .field("replicas", &self.replicas)
            .field("control_plane_url", &self.control_plane_url)
            .field("key_secret", &self.key_secret)
            .field("capacity", &self.capacity)
            .field("port", &self.port)
            .field("env", &self.env)
            .field(
                "secret_env",
                &format_args!("{secret_names:?} (values redacted)"),
            )
            .field("resources", &self.resources)
            .field("release", &self.release)
            .finish()
    }
}

impl PoolDeployment {
    /// The pool's name as Kubernetes object names allow it: `_` becomes `-`.
    pub fn object_suffix(&self) -> String {
        object_suffix(&self.pool)
    }

    /// Name of the pool's Deployment: `flotilla-agent-<pool>`.
    pub fn deployment_name(&self) -> String {
        deployment_name(&self.pool)
    }

    /// Name of the pool's Secret: `flotilla-pool-<pool>`.
    pub fn secret_name(&self) -> String {
        secret_name(&self.pool)
    }

    /// Labels of every object of the pool and of its pods.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert("app.kubernetes.io/component".to_owned(), "agent".to_owned());
        labels.insert(
            "app.kubernetes.io/managed-by".to_owned(),
            "flotilla".to_owned(),
        );
        labels
    }

    /// The labels that select the pool's pods. They never change for a pool, as a Deployment's
    /// selector is immutable.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                "flotilla-agent".to_owned(),
            ),
            (
                "app.kubernetes.io/instance".to_owned(),
                self.release.clone(),
            ),
            (AGENT_TYPE_LABEL.to_owned(), self.pool.clone()),
        ])
    }

    /// Checks what Kubernetes would reject, or what would make a pod that cannot start, before
    /// anything is sent, so that the error names the pool's setting rather than an API field.
    pub fn validate(&self) -> Result<(), KubeError> {
        let invalid = |reason: String| KubeError::InvalidSpec {
            pool: self.pool.clone(),
            reason,
        };
        validate_pool_name(&self.pool).map_err(invalid)?;
        if !self.namespace.is_empty() && !is_dns_label(&self.namespace) {
            return Err(invalid(format!(
                "namespace `{}` is not a DNS label (lower-case letters, digits and '-', at most 63)",
                self.namespace
            )));
        }
        if self.image.trim().is_empty() {
            return Err(invalid("no image".to_owned()));
        }
        if self.replicas < 0 {
            return Err(invalid(format!(
                "replicas must not be negative (got {})",
                self.replicas
            )));
        }
        if self.control_plane_url.trim().is_empty() {
            return Err(invalid("no control plane URL".to_owned()));
        }
        if !is_dns_subdomain(&self.key_secret) {
            return Err(invalid(format!(
                "key secret name `{}` is not a valid Secret name",
                self.key_secret
            )));
        }
        if self.capacity == 0 {
            return Err(invalid("capacity must be at least 1".to_owned()));
        }
        if self.port == 0 {
            return Err(invalid("port must not be 0".to_owned()));
        }
        if !is_label_value(&self.release) || self.release.is_empty() {
            return Err(invalid(format!(
                "release `{}` is not a valid label value (letters, digits, '-', '_', '.', at most 63)",
                self.release
            )));
        }
        for name in self.env.keys().chain(self.secret_env.keys()) {
            if !is_env_name(name) {
                return Err(invalid(format!(
                    "environment variable name `{name}` is invalid (letters, digits, '_', '-', '.'; not starting with a digit)"
                )));
            }
            if RESERVED_ENV.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "environment variable `{name}` is set by Flotilla and cannot be overridden"
                )));
            }
        }
        if let Some(both) = self.env.keys().find(|k| self.secret_env.contains_key(*k)) {
            return Err(invalid(format!(
                "environment variable `{both}` is both plain and secret"
            )));
        }
        let r = &self.resources;
        for (what, value) in [
            ("cpu request", &r.cpu_request),
            ("memory request", &r.memory_request),
            ("cpu limit", &r.cpu_limit),
            ("memory limit", &r.memory_limit),
        ] {
            if !is_quantity(value) {
                return Err(invalid(format!(
                    "{what} `{value}` is not a Kubernetes quantity (e.g. `250m`, `1`, `256Mi`, `1Gi`)"
                )));
            }
        }
        Ok(())
    }
}

/// The pool's name as Kubernetes object names allow it: `_` becomes `-`.
pub fn object_suffix(pool: &str) -> String {
    pool.replace('_', "-")
}

/// Name of a pool's Deployment: `flotilla-agent-<pool with '_' as '-'>`.
pub fn deployment_name(pool: &str) -> String {
    format!("flotilla-agent-{}", object_suffix(pool))
}

/// Name of a pool's Secret: `flotilla-pool-<pool with '_' as '-'>`.
pub fn secret_name(pool: &str) -> String {
    format!("flotilla-pool-{}", object_suffix(pool))
}

/// Longest pool name: the `flotilla.dev/agent-type` label value holds it whole, and label values
/// have at most 63 characters. (Pod names longer than a host name are truncated by the kubelet
/// for the host name only, which is harmless.)
pub const MAX_POOL_NAME: usize = 63;

/// A pool name is `a-z0-9_-`, starts and ends with a letter or digit, and is short enough for
/// the object names derived from it.
pub fn validate_pool_name(pool: &str) -> Result<(), String> {
    if pool.is_empty() {
        return Err("the pool has no name".to_owned());
    }
    if pool.len() > MAX_POOL_NAME {
        return Err(format!(
            "pool name is {} characters long; at most {MAX_POOL_NAME} fit in Kubernetes names",
            pool.len()
        ));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if !pool.chars().all(allowed) {
        return Err("pool name may only hold a-z, 0-9, '_' and '-'".to_owned());
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !alnum(pool.chars().next()) || !alnum(pool.chars().last()) {
        return Err("pool name must start and end with a letter or digit".to_owned());
    }
    Ok(())
}

/// RFC 1123 label, as namespaces need.
fn is_dns_label(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| alnum(c) || c == '-')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// RFC 1123 subdomain, as Secret names need.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label value: empty, or at most 63 of `[A-Za-z0-9_.-]` beginning and ending alphanumeric.
fn is_label_value(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.is_empty()
        || (s.len() <= 63
            && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
            && s.starts_with(alnum)
            && s.ends_with(alnum))
}

/// An environment variable name Kubernetes accepts on every supported version, and that is also
/// a valid key of the pool Secret: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn is_env_name(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(ok)
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// A Kubernetes quantity: a signed decimal number, then a binary suffix (`Ki`..`Ei`), a decimal
/// suffix (`n`, `u`, `m`, `k`, `M`..`E`) or a decimal exponent (`e3`, `E-2`).
fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 16] = [
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
    ];
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let split = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(split);
    let number_ok = match number.split_once('.') {
        None => !number.is_empty(),
        Some((whole, fraction)) => {
            let has_digits = !whole.is_empty() || !fraction.is_empty();
            has_digits && !fraction.contains('.')
        }
    };
    let exponent_ok = |e: &str| {
        let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
    };
    let suffix_ok =
        SUFFIXES.contains(&suffix) || suffix.strip_prefix(['e', 'E']).is_some_and(exponent_ok);
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn quantities() {
        for ok in [
            "250m", "1", "0.5", "256Mi", "1Gi", "1e3", "100k", "2E", "1.5Gi", ".5", "1E-2", "+3",
        ] {
            assert!(is_quantity(ok), "{ok} should be a quantity");
        }
        for bad in [
            "", "m", "1GB", "1.2.3", "abc", "1 Gi", "1e", "Gi", ".", "1Ki2",
        ] {
            assert!(!is_quantity(bad), "{bad} should not be a quantity");
        }
    }

    #[test]
    fn pool_names() {
        assert!(validate_pool_name("code_generator").is_ok());
        assert!(validate_pool_name("a").is_ok());
        for bad in [
            "",
            "_x",
            "x-",
            "Code",
            "a.b",
            &"x".repeat(MAX_POOL_NAME + 1),
        ] {
            assert!(
                validate_pool_name(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn names_map_underscores() {
        assert_eq!(
            deployment_name("code_generator"),
            "flotilla-agent-code-generator"
        );
        assert_eq!(
            secret_name("code_generator"),
            "flotilla-pool-code-generator"
        );
    }

    #[test]
    fn debug_redacts_secret_values() {
        let spec = PoolDeployment {
            secret_env: BTreeMap::from([("OPENAI_API_KEY".to_owned(), "sk-live-123".to_owned())]),
            ..PoolDeployment::default()
        };
        let shown = format!("{spec:?}");
        assert!(shown.contains("OPENAI_API_KEY"));
        assert!(!shown.contains("sk-live-123"));
    }
}
