//! `[vault]`: where secrets are kept and how the built-in backend finds its master key.
//!
//! Secrets themselves never appear in configuration: the HashiCorp token and AppRole secret id
//! are `env:NAME` references, read by the server when it connects.

use super::{ConfigError, invalid};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `[vault]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultSection {
    /// `builtin` (values encrypted in Flotilla's own database) or `hashicorp` (a HashiCorp
    /// Vault or OpenBao KV v2 engine, configured in `[vault.hashicorp]`).
    pub backend: String,
    /// File holding the master key: the first line is the current key, further lines are
    /// previous keys still accepted for reading (each base64 or hex of 32 bytes). Empty: the key
    /// comes from `FLOTILLA_MASTER_KEY` or, on embedded SQLite, from `master.key` beside the
    /// database, generated on the first start.
    pub master_key_file: PathBuf,
    /// Versions kept per secret; writing a new version deletes older ones beyond this.
    pub keep_versions: u32,
    /// Largest secret value accepted, in bytes.
    pub max_value_bytes: usize,
    pub hashicorp: HashicorpSection,
}

impl Default for VaultSection {
    fn default() -> Self {
        Self {
            backend: "builtin".to_owned(),
            master_key_file: PathBuf::new(),
            keep_versions: 10,
            max_value_bytes: 64 * 1024,
            hashicorp: HashicorpSection::default(),
        }
    }
}

/// `[vault.hashicorp]`: a KV v2 secrets engine of HashiCorp Vault or OpenBao.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashicorpSection {
    /// Base URL of the server, e.g. `https://vault.internal:8200`.
    pub address: String,
    /// Mount path of the KV v2 engine.
    pub mount: String,
    /// Folder under the mount that holds Flotilla's secrets, one sub-folder per tenant id.
    pub prefix: String,
    /// Token authentication: `env:NAME`, the environment variable holding the token.
    pub token: String,
    /// AppRole authentication: the role id, literally or as `env:NAME`.
    pub role_id: String,
    /// AppRole authentication: `env:NAME`, the environment variable holding the secret id.
    pub secret_id: String,
    /// Mount path of the AppRole auth method.
    pub approle_mount: String,
    /// Vault Enterprise namespace (`X-Vault-Namespace`); empty for none.
    pub namespace: String,
    /// Limit on each request to the server, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for HashicorpSection {
    fn default() -> Self {
        Self {
            address: String::new(),
            mount: "secret".to_owned(),
            prefix: "flotilla".to_owned(),
            token: String::new(),
            role_id: String::new(),
            secret_id: String::new(),
            approle_mount: "approle".to_owned(),
            namespace: String::new(),
            timeout_ms: 5_000,
        }
    }
}

/// Validated `[vault]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vault {
    pub backend: VaultBackend,
    /// `None`: `FLOTILLA_MASTER_KEY`, or the generated file of an embedded store.
    pub master_key_file: Option<PathBuf>,
    pub keep_versions: u32,
    pub max_value_bytes: usize,
}

impl Default for Vault {
    fn default() -> Self {
        Vault {
            backend: VaultBackend::Builtin,
            master_key_file: None,
            keep_versions: 10,
            max_value_bytes: 64 * 1024,
        }
    }
}

/// Where secret values live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VaultBackend {
    /// Encrypted in Flotilla's own database.
    Builtin,
    /// A KV v2 engine of HashiCorp Vault or OpenBao.
    Hashicorp(Hashicorp),
}

/// Validated `[vault.hashicorp]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hashicorp {
    /// Without a trailing slash.
    pub address: String,
    pub mount: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
    pub auth: HashicorpAuth,
    pub namespace: Option<String>,
    pub timeout: Duration,
}

/// How Flotilla logs in to the Vault server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashicorpAuth {
    /// A token read from this environment variable.
    Token { env: String },
    /// AppRole login; the secret id is read from the environment variable `secret_id_env`.
    AppRole {
        mount: String,
        role_id: ValueSource,
        secret_id_env: String,
    },
}

/// A setting given literally or as an environment reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueSource {
    Literal(String),
    Env(String),
}

/// `env:NAME` → `NAME`, when well formed.
fn env_reference(text: &str) -> Option<&str> {
    let name = text.strip_prefix("env:")?;
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    valid.then_some(name)
}

fn mount_path(key: &str, value: &str) -> Result<String, ConfigError> {
    let trimmed = value.trim_matches('/');
    let ok = !trimmed.is_empty()
        && trimmed.split('/').all(|s| {
            !s.is_empty()
                && s != ".."
                && s != "."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok {
        Ok(trimmed.to_owned())
    } else {
        Err(invalid(
            key,
            format!("`{value}` is not a path of `A-Za-z0-9-_.` segments"),
        ))
    }
}

/// Checks `[vault]`.
pub(super) fn validate(raw: &VaultSection) -> Result<Vault, ConfigError> {
    if !(1..=1000).contains(&raw.keep_versions) {
        return Err(invalid("vault.keep_versions", "must be between 1 and 1000"));
    }
    if !(1..=1024 * 1024).contains(&raw.max_value_bytes) {
        return Err(invalid(
            "vault.max_value_bytes",
            "must be between 1 and 1048576",
        ));
    }
    let backend = match raw.backend.as_str() {
        "builtin" => VaultBackend::Builtin,
        "hashicorp" => VaultBackend::Hashicorp(validate_hashicorp(&raw.hashicorp)?),
        other => {
            return Err(invalid(
                "vault.backend",
                format!("`{other}` is not `builtin` or `hashicorp`"),
            ));
        }
    };
    Ok(Vault {
        backend,
        master_key_file: (!raw.master_key_file.as_os_str().is_empty())
            .then(|| raw.master_key_file.clone()),
        keep_versions: raw.keep_versions,
        max_value_bytes: raw.max_value_bytes,
    })
}

fn validate_hashicorp(h: &HashicorpSection) -> Result<Hashicorp, ConfigError> {
    let address = h.address.trim_end_matches('/');
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        return Err(invalid(
            "vault.hashicorp.address",
            "must be an http:// or https:// URL when `vault.backend = \"hashicorp\"`",
        ));
    }
    let mount = mount_path("vault.hashicorp.mount", &h.mount)?;
    let prefix = if h.prefix.trim_matches('/').is_empty() {
        String::new()
    } else {
        mount_path("vault.hashicorp.prefix", &h.prefix)?
    };
    let approle_mount = mount_path("vault.hashicorp.approle_mount", &h.approle_mount)?;
    let auth = match (
        h.token.is_empty(),
        h.role_id.is_empty(),
        h.secret_id.is_empty(),
    ) {
        (false, true, true) => HashicorpAuth::Token {
            env: env_reference(&h.token)
                .ok_or_else(|| {
                    invalid(
                        "vault.hashicorp.token",
                        "must be an environment reference `env:NAME`, never the token itself",
                    )
                })?
                .to_owned(),
        },
        (true, false, false) => HashicorpAuth::AppRole {
            mount: approle_mount,
            role_id: match env_reference(&h.role_id) {
                Some(name) => ValueSource::Env(name.to_owned()),
                None if h.role_id.starts_with("env:") => {
                    return Err(invalid(
                        "vault.hashicorp.role_id",
                        "`env:` must be followed by a variable name",
                    ));
                }
                None => ValueSource::Literal(h.role_id.clone()),
            },
            secret_id_env: env_reference(&h.secret_id)
                .ok_or_else(|| {
                    invalid(
                        "vault.hashicorp.secret_id",
                        "must be an environment reference `env:NAME`, never the secret id itself",
                    )
                })?
                .to_owned(),
        },
        _ => {
            return Err(invalid(
                "vault.hashicorp",
                "set either `token` or both `role_id` and `secret_id`",
            ));
        }
    };
    if h.timeout_ms == 0 {
        return Err(invalid(
            "vault.hashicorp.timeout_ms",
            "must be greater than 0",
        ));
    }
    Ok(Hashicorp {
        address: address.to_owned(),
        mount,
        prefix,
        auth,
        namespace: (!h.namespace.is_empty()).then(|| h.namespace.clone()),
        timeout: Duration::from_millis(h.timeout_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_builtin_backend() {
        let vault = validate(&VaultSection::default());
        assert_eq!(vault, Ok(Vault::default()));
    }

    #[test]
    fn hashicorp_secrets_must_be_environment_references() {
        let mut raw = VaultSection {
            backend: "hashicorp".to_owned(),
            ..VaultSection::default()
        };
        raw.hashicorp.address = "http://127.0.0.1:8200/".to_owned();
        raw.hashicorp.token = "hvs.literal-token".to_owned();
        assert!(
            matches!(validate(&raw), Err(ConfigError::Invalid { key, .. }) if key == "vault.hashicorp.token")
        );
        raw.hashicorp.token = "env:VAULT_TOKEN".to_owned();
        let vault = validate(&raw);
        let Ok(Vault {
            backend: VaultBackend::Hashicorp(h),
            ..
        }) = vault
        else {
            unreachable!("{vault:?}")
        };
        assert_eq!(h.address, "http://127.0.0.1:8200");
        assert_eq!(
            h.auth,
            HashicorpAuth::Token {
                env: "VAULT_TOKEN".to_owned()
            }
        );
        raw.hashicorp.token.clear();
        raw.hashicorp.role_id = "my-role".to_owned();
        raw.hashicorp.secret_id = "s.literal".to_owned();
        assert!(validate(&raw).is_err());
        raw.hashicorp.secret_id = "env:SECRET_ID".to_owned();
        assert!(validate(&raw).is_ok());
    }
}
