//! The secrets vault (docs/design.md §10): per-tenant secrets with versions, kept either in
//! Flotilla's own database under envelope encryption ([`builtin`]) or in a HashiCorp Vault /
//! OpenBao KV v2 engine ([`hashicorp`]). The master key also derives keys for other purposes
//! ([`MasterKeys::derive`], e.g. per-task model-gateway tokens).
//!
//! Secret values travel as [`SecretString`]: zeroised on drop, redacted in `Debug`, exposed only
//! where they are sealed, sent to an agent or answered to an authorised reader. Errors and logs
//! name paths and versions, never values.

mod builtin;
pub mod crypto;
pub mod hashicorp;
pub mod master;
pub mod path;

use base64::Engine;
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use flotilla_core::Timestamp;
use flotilla_core::config::{Config, Database, VaultBackend};
use flotilla_core::id::TenantId;
use flotilla_core::wire::{RewrapReport, SecretInfo};
use flotilla_store::{DynStore, StoreError};
use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeMap, HashMap};
use zeroize::Zeroizing;

pub use master::{KeySource, MasterKey, MasterKeys};
pub use path::{InvalidPath, SecretPath, SecretRef};

/// Where the vault reads environment variables (`FLOTILLA_MASTER_KEY`, the HashiCorp token):
/// the process environment in production, a map in tests.
pub trait Environment: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// What went wrong in the vault. No variant carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The path is not a valid secret path.
    #[error("{0}")]
    InvalidPath(#[from] InvalidPath),
    /// The value is larger than `vault.max_value_bytes`.
    #[error("a secret value may hold at most {limit} bytes")]
    TooLarge { limit: usize },
    /// The value is unacceptable for another reason (e.g. empty).
    #[error("{0}")]
    InvalidValue(String),
    /// No such secret (or version) in this tenant.
    #[error("no secret `{path}`{}", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    NotFound { path: String, version: Option<u32> },
    /// The built-in backend has only an ephemeral master key, which must not protect stored
    /// secrets.
    #[error(
        "the vault has no master key: set FLOTILLA_MASTER_KEY or [vault] master_key_file (see docs/security.md)"
    )]
    NoMasterKey,
    /// The master key could not be loaded or is malformed.
    #[error("{0}")]
    MasterKey(String),
    /// A stored data key is wrapped by a master key that is not configured.
    #[error(
        "secret `{path}` version {version} is wrapped by master key {id}, which is not configured; add it to FLOTILLA_PREVIOUS_MASTER_KEYS or the key file"
    )]
    UnknownMasterKey {
        path: String,
        version: u32,
        id: String,
    },
    /// A stored ciphertext or wrapped key failed authentication: altered or moved.
    #[error("secret `{path}` version {version}: {source}")]
    Tampered {
        path: String,
        version: u32,
        source: crypto::OpenFailed,
    },
    /// A listing would walk more folders or find more paths than a listing may.
    #[error("{0}")]
    ListTooLarge(String),
    /// Encryption failed.
    #[error(transparent)]
    Seal(#[from] crypto::SealFailed),
    /// Writers of one path kept colliding.
    #[error("secret `{0}` is being written concurrently; retry")]
    Conflict(String),
    /// The operation does not exist on this backend.
    #[error("{0}")]
    Unsupported(String),
    /// The external vault server failed or refused; `transient` when a retry may help.
    #[error("{message}")]
    Backend { message: String, transient: bool },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One version of a secret with its value.
#[derive(Debug)]
pub struct Secret {
    pub path: String,
    pub version: u32,
    pub created_at: Timestamp,
    pub value: SecretString,
}

/// A version just written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub version: u32,
    pub created_at: Timestamp,
}

enum Backend {
    Builtin(builtin::Builtin),
    Hashicorp(Box<hashicorp::Kv2>),
}

/// The vault, shared through `AppState::vault`.
pub struct Vault {
    master: MasterKeys,
    backend: Backend,
    keep_versions: u32,
    max_value_bytes: usize,
}

impl Vault {
    /// The configured vault: finds (or, on embedded SQLite, generates) the master key and
    /// prepares the backend. Nothing is contacted yet.
    pub fn open(
        config: &Config,
        store: DynStore,
        env: &dyn Environment,
    ) -> Result<Vault, VaultError> {
        check_references(config)?;
        // Only an embedded store gets a generated key file, beside its database. The store in
        // hand decides (a test may pass a store other than the configured one).
        let embedded_dir = match &config.database {
            Database::Sqlite(path) if !store.topology().is_shared() => {
                Some(path.parent().unwrap_or(std::path::Path::new("")))
            }
            Database::Sqlite(_) | Database::Postgres(_) => None,
        };
        let master = master::load(config.vault.master_key_file.as_deref(), embedded_dir, env)?;
        let backend = match &config.vault.backend {
            VaultBackend::Builtin => Backend::Builtin(builtin::Builtin::new(store)),
            VaultBackend::Hashicorp(h) => Backend::Hashicorp(Box::new(hashicorp::Kv2::new(
                h,
                config.vault.keep_versions,
                env,
            )?)),
        };
        tracing::info!(
            backend = match backend {
                Backend::Builtin(_) => "builtin",
                Backend::Hashicorp(_) => "hashicorp",
            },
            master_key_id = master.current().id(),
            accepted_master_keys = ?master.ids(),
            "Vault ready"
        );
        Ok(Vault {
            master,
            backend,
            keep_versions: config.vault.keep_versions,
            max_value_bytes: config.vault.max_value_bytes,
        })
    }

    /// A built-in vault over `store` with the given keys (tests and tools).
    pub fn builtin(master: MasterKeys, store: DynStore, keep_versions: u32) -> Vault {
        Vault {
            master,
            backend: Backend::Builtin(builtin::Builtin::new(store)),
            keep_versions,
            max_value_bytes: flotilla_core::config::Vault::default().max_value_bytes,
        }
    }

    /// The master keys, e.g. `state.vault.master().derive("task-token")`.
    pub fn master(&self) -> &MasterKeys {
        &self.master
    }

    /// `builtin` or `hashicorp`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Builtin(_) => "builtin",
            Backend::Hashicorp(_) => "hashicorp",
        }
    }

    /// Checks a value before it is written.
    fn check_value(&self, value: &SecretString) -> Result<(), VaultError> {
        let len = value.expose_secret().len();
        if len == 0 {
            return Err(VaultError::InvalidValue(
                "a secret value must not be empty".to_owned(),
            ));
        }
        if len > self.max_value_bytes {
            return Err(VaultError::TooLarge {
                limit: self.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Writes a new version of the secret at `path`.
    pub async fn put(
        &self,
        tenant: TenantId,
        path: &SecretPath,
        value: &SecretString,
        actor: Option<&str>,
        now: Timestamp,
    ) -> Result<Written, VaultError> {
        self.check_value(value)?;
        match &self.backend {
            Backend::Builtin(b) => {
                b.put(
                    &self.master,
                    self.keep_versions,
                    tenant,
                    path,
                    value,
                    actor,
                    now,
                )
                .await
            }
            Backend::Hashicorp(h) => h.put(tenant, path, value).await,
        }
    }

    /// The value of one version (the newest when `version` is `None`).
    pub async fn get(
        &self,
        tenant: TenantId,
        path: &SecretPath,
        version: Option<u32>,
    ) -> Result<Secret, VaultError> {
        match &self.backend {
            Backend::Builtin(b) => b.get(&self.master, tenant, path, version).await,
            Backend::Hashicorp(h) => h.get(tenant, path, version).await,
        }
    }

    /// Paths of the tenant's secrets starting with `prefix`, with versions and times, never
    /// values.
    pub async fn list(
        &self,
        tenant: TenantId,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<SecretInfo>, VaultError> {
        SecretPath::check_prefix(prefix)?;
        match &self.backend {
            Backend::Builtin(b) => b.list(tenant, prefix, limit).await,
            Backend::Hashicorp(h) => h.list(tenant, prefix, limit).await,
        }
    }

    /// Deletes every version; returns how many there were.
    pub async fn delete(
        &self,
        tenant: TenantId,
        path: &SecretPath,
        now: Timestamp,
    ) -> Result<u32, VaultError> {
        match &self.backend {
            Backend::Builtin(b) => b.delete(tenant, path, now).await,
            Backend::Hashicorp(h) => h.delete(tenant, path).await,
        }
    }

    /// Re-wraps every data key not wrapped by the current master key (master-key rotation).
    /// Reads keep working throughout: each version is re-wrapped in its own write.
    pub async fn rewrap(&self) -> Result<RewrapReport, VaultError> {
        match &self.backend {
            Backend::Builtin(b) => b.rewrap(&self.master).await,
            Backend::Hashicorp(_) => Err(VaultError::Unsupported(
                "the hashicorp backend has no Flotilla master key to rotate; rotate keys in Vault itself"
                    .to_owned(),
            )),
        }
    }

    /// Resolves configuration text at the point of use: a `secret://path[@version]` reference
    /// becomes the tenant's secret value; any other text is returned as it is.
    pub async fn resolve(&self, tenant: TenantId, text: &str) -> Result<SecretString, VaultError> {
        match SecretRef::parse(text)? {
            Some(reference) => Ok(self
                .get(tenant, &reference.path, reference.version)
                .await?
                .value),
            None => Ok(SecretString::from(text.to_owned())),
        }
    }
}

/// The `secret://` references of a process environment, resolved each time the process starts
/// (so a restarted agent gets the current value). Pools belong to no tenant: their references
/// name secrets of the default tenant.
#[derive(Clone)]
pub struct EnvSecrets {
    vault: std::sync::Arc<Vault>,
    tenant: TenantId,
    references: Vec<(String, SecretRef)>,
}

impl std::fmt::Debug for EnvSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvSecrets")
            .field("tenant", &self.tenant)
            .field(
                "variables",
                &self.references.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl EnvSecrets {
    /// Splits `env` into plain variables and references; `None` when there is no reference.
    /// Malformed references were refused at start-up ([`check_references`]) and stay plain.
    pub fn split(
        vault: &std::sync::Arc<Vault>,
        env: &BTreeMap<String, String>,
    ) -> (Vec<(String, String)>, Option<EnvSecrets>) {
        let mut plain = Vec::new();
        let mut references = Vec::new();
        for (name, text) in env {
            match SecretRef::parse(text) {
                Ok(Some(reference)) => references.push((name.clone(), reference)),
                Ok(None) | Err(_) => plain.push((name.clone(), text.clone())),
            }
        }
        let secrets = (!references.is_empty()).then(|| EnvSecrets {
            vault: vault.clone(),
            tenant: TenantId::DEFAULT,
            references,
        });
        (plain, secrets)
    }

    /// The variables with their current values. The error names the variable and the path,
    /// never a value.
    pub async fn resolve(&self) -> Result<Vec<(String, SecretString)>, String> {
        let mut out = Vec::with_capacity(self.references.len());
        for (name, reference) in &self.references {
            let secret = self
                .vault
                .get(self.tenant, &reference.path, reference.version)
                .await
                .map_err(|e| format!("environment variable {name}: {e}"))?;
            out.push((name.clone(), secret.value));
        }
        Ok(out)
    }
}

/// Refuses malformed `secret://` references in pool environments at start-up.
fn check_references(config: &Config) -> Result<(), VaultError> {
    for pool in &config.pools {
        for (name, text) in &pool.env {
            SecretRef::parse(text).map_err(|e| {
                VaultError::InvalidValue(format!("pool `{}`, env {name}: {e}", pool.name))
            })?;
        }
    }
    Ok(())
}

/// A strong random value: URL-safe base64 (no padding) of `bytes` random bytes.
pub fn generate_value(bytes: usize) -> SecretString {
    let mut raw = Zeroizing::new(vec![0u8; bytes]);
    OsRng.fill_bytes(raw.as_mut_slice());
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_slice()))
}

/// A timestamp as the store keeps it (microseconds).
fn stored_time(t: Timestamp) -> Timestamp {
    Timestamp::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}
