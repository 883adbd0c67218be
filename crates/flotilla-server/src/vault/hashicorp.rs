//! The HashiCorp Vault / OpenBao backend: a KV v2 secrets engine, for organisations that already
//! run Vault. Each tenant's secrets live under `<mount>/data/<prefix>/<tenant id>/<path>` as
//! `{"value": "…"}`; versions, their times and pruning (`max_versions`) are KV v2's own.
//!
//! Authentication is a token or an AppRole login (`auth/<mount>/login`); the AppRole token is
//! cached and renewed by logging in again shortly before it expires, or once after a 403.
//! Request and response bodies carrying values are not logged; Vault's error messages are.

use super::{Environment, Secret, SecretPath, VaultError, Written};
use flotilla_core::Timestamp;
use flotilla_core::config::{Hashicorp, HashicorpAuth, ValueSource};
use flotilla_core::id::TenantId;
use flotilla_core::wire::{SecretInfo, SecretVersionInfo};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Most folders one listing walks on the HashiCorp backend.
const MAX_LIST_FOLDERS: usize = 1_000;
/// Most paths one listing collects before sorting (its `limit` applies after).
const MAX_LIST_PATHS: usize = 10_000;
/// An AppRole token is renewed this long before its lease runs out.
const RENEW_MARGIN: Duration = Duration::from_secs(30);

enum Auth {
    Token(SecretString),
    AppRole {
        mount: String,
        role_id: String,
        secret_id: SecretString,
        /// The current token and when to log in again.
        session: Mutex<Option<(SecretString, Instant)>>,
    },
}

/// A client of one KV v2 engine.
pub struct Kv2 {
    http: reqwest::Client,
    address: String,
    mount: String,
    prefix: String,
    namespace: Option<String>,
    auth: Auth,
    keep_versions: u32,
}

fn env_var(env: &dyn Environment, name: &str, what: &str) -> Result<SecretString, VaultError> {
    env.var(name)
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
        .ok_or_else(|| {
            VaultError::MasterKey(format!(
                "the environment variable {name} ({what} of the hashicorp vault backend) is not set"
            ))
        })
}

fn backend_error(e: &reqwest::Error) -> VaultError {
    VaultError::Backend {
        message: format!("the Vault server did not answer: {e}"),
        transient: true,
    }
}

/// Vault's error answers: `{"errors": ["…"]}`.
#[derive(Deserialize, Default)]
struct Errors {
    #[serde(default)]
    errors: Vec<String>,
}

fn refused(status: StatusCode, body: &[u8]) -> VaultError {
    let errors = serde_json::from_slice::<Errors>(body).unwrap_or_default();
    VaultError::Backend {
        message: format!(
            "the Vault server answered {status}: {}",
            if errors.errors.is_empty() {
                "no detail".to_owned()
            } else {
                errors.errors.join("; ")
            }
        ),
        transient: status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS,
    }
}

fn parse_time(text: &str) -> Result<Timestamp, VaultError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| VaultError::Backend {
            message: format!("the Vault server sent an unreadable time `{text}`"),
            transient: false,
        })
}

fn malformed(what: &str) -> VaultError {
    VaultError::Backend {
        message: format!("the Vault server sent an unexpected {what}"),
        transient: false,
    }
}

#[derive(Deserialize)]
struct Wrapped<T> {
    data: T,
}

#[derive(Deserialize)]
struct WriteAnswer {
    version: u32,
    created_time: String,
}

#[derive(Deserialize)]
struct ReadAnswer {
    data: Option<ValueData>,
    metadata: VersionMetadata,
}

#[derive(Deserialize)]
struct ValueData {
    value: Option<SecretString>,
}

#[derive(Deserialize)]
struct VersionMetadata {
    version: u32,
    created_time: String,
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}

#[derive(Deserialize)]
struct Metadata {
    current_version: u32,
    created_time: String,
    updated_time: String,
    #[serde(default)]
    versions: BTreeMap<String, VersionState>,
}

#[derive(Deserialize)]
struct VersionState {
    created_time: String,
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}

#[derive(Deserialize)]
struct Keys {
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Deserialize)]
struct Login {
    auth: LoginAuth,
}

#[derive(Deserialize)]
struct LoginAuth {
    client_token: SecretString,
    #[serde(default)]
    lease_duration: u64,
}

impl Kv2 {
    /// Reads the credentials from the environment; contacts nothing yet.
    pub fn new(
        config: &Hashicorp,
        keep_versions: u32,
        env: &dyn Environment,
    ) -> Result<Kv2, VaultError> {
        let auth = match &config.auth {
            HashicorpAuth::Token { env: name } => Auth::Token(env_var(env, name, "token")?),
            HashicorpAuth::AppRole {
                mount,
                role_id,
                secret_id_env,
            } => Auth::AppRole {
                mount: mount.clone(),
                role_id: match role_id {
                    ValueSource::Literal(id) => id.clone(),
                    ValueSource::Env(name) => env_var(env, name, "AppRole role id")?
                        .expose_secret()
                        .to_owned(),
                },
                secret_id: env_var(env, secret_id_env, "AppRole secret id")?,
                session: Mutex::new(None),
            },
        };
        let http = crate::outbound::client_builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| VaultError::Backend {
                message: format!("cannot build the HTTP client: {e}"),
                transient: false,
            })?;
        Ok(Kv2 {
            http,
            address: config.address.clone(),
            mount: config.mount.clone(),
            prefix: config.prefix.clone(),
            namespace: config.namespace.clone(),
            auth,
            keep_versions,
        })
    }

    /// `<prefix>/<tenant>` or `<prefix>/<tenant>/<path>`.
    fn key(&self, tenant: TenantId, path: &str) -> String {
        let mut key = String::new();
        if !self.prefix.is_empty() {
            key.push_str(&self.prefix);
            key.push('/');
        }
        key.push_str(&tenant.0.to_string());
        if !path.is_empty() {
            key.push('/');
            key.push_str(path);
        }
        key
    }

    fn url(&self, kind: &str, key: &str) -> String {
        format!("{}/v1/{}/{kind}/{key}", self.address, self.mount)
    }

    /// A token to send; logs in with AppRole when there is none or it is about to expire.
    async fn token(&self, force_login: bool) -> Result<SecretString, VaultError> {
        let (mount, role_id, secret_id, session) = match &self.auth {
            Auth::Token(token) => return Ok(token.clone()),
            Auth::AppRole {
                mount,
                role_id,
                secret_id,
                session,
            } => (mount, role_id, secret_id, session),
        };
        let mut session = session.lock().await;
        if !force_login
            && let Some((token, renew_at)) = session.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let body = serde_json::json!({
            "role_id": role_id,
            "secret_id": secret_id.expose_secret(),
        });
        let mut request = self
            .http
            .post(format!("{}/v1/auth/{mount}/login", self.address))
            .json(&body);
        if let Some(ns) = &self.namespace {
            request = request.header("X-Vault-Namespace", ns);
        }
        let response = request.send().await.map_err(|e| backend_error(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| backend_error(&e))?;
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        let login: Login =
            serde_json::from_slice(&bytes).map_err(|_| malformed("AppRole login answer"))?;
        // A token without a lease (lease_duration 0) does not expire.
        let lease = Duration::from_secs(if login.auth.lease_duration == 0 {
            u64::from(u32::MAX)
        } else {
            login.auth.lease_duration
        });
        let renew_at = Instant::now() + lease.saturating_sub(RENEW_MARGIN).max(lease / 2);
        tracing::debug!(mount, "Logged in to Vault with AppRole");
        *session = Some((login.auth.client_token.clone(), renew_at));
        Ok(login.auth.client_token)
    }

    /// One request, logging in again once if an AppRole token was refused. Returns the status
    /// and body.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Vec<u8>), VaultError> {
        let mut force_login = false;
        loop {
            let token = self.token(force_login).await?;
            let mut request = self
                .http
                .request(method.clone(), url)
                .header("X-Vault-Token", token.expose_secret());
            if let Some(ns) = &self.namespace {
                request = request.header("X-Vault-Namespace", ns);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|e| backend_error(&e))?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(|e| backend_error(&e))?;
            if status == StatusCode::FORBIDDEN
                && !force_login
                && matches!(self.auth, Auth::AppRole { .. })
            {
                force_login = true;
                continue;
            }
            return Ok((status, bytes.to_vec()));
        }
    }

    pub(super) async fn put(
        &self,
        tenant: TenantId,
        path: &SecretPath,
        value: &SecretString,
    ) -> Result<Written, VaultError> {
        let key = self.key(tenant, path.as_str());
        let body = serde_json::json!({ "data": { "value": value.expose_secret() } });
        let (status, bytes) = self
            .send(Method::POST, &self.url("data", &key), Some(&body))
            .await?;
        drop(body);
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        let written: Wrapped<WriteAnswer> =
            serde_json::from_slice(&bytes).map_err(|_| malformed("write answer"))?;
        // KV v2 prunes versions beyond the secret's max_versions.
        let settings = serde_json::json!({ "max_versions": self.keep_versions });
        let (status, bytes) = self
            .send(Method::POST, &self.url("metadata", &key), Some(&settings))
            .await?;
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        Ok(Written {
            version: written.data.version,
            created_at: parse_time(&written.data.created_time)?,
        })
    }

    pub(super) async fn get(
        &self,
        tenant: TenantId,
        path: &SecretPath,
        version: Option<u32>,
    ) -> Result<Secret, VaultError> {
        let mut url = self.url("data", &self.key(tenant, path.as_str()));
        if let Some(v) = version {
            url.push_str(&format!("?version={v}"));
        }
        let not_found = || VaultError::NotFound {
            path: path.as_str().to_owned(),
            version,
        };
        let (status, bytes) = self.send(Method::GET, &url, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Err(not_found());
        }
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        let read: Wrapped<ReadAnswer> =
            serde_json::from_slice(&bytes).map_err(|_| malformed("read answer"))?;
        let meta = read.data.metadata;
        if meta.destroyed || !meta.deletion_time.is_empty() {
            return Err(not_found());
        }
        let value = read
            .data
            .data
            .and_then(|d| d.value)
            .ok_or_else(|| malformed("secret without a `value` field"))?;
        Ok(Secret {
            path: path.as_str().to_owned(),
            version: meta.version,
            created_at: parse_time(&meta.created_time)?,
            value,
        })
    }

    /// The metadata of one secret, `None` when it does not exist.
    async fn metadata(&self, key: &str) -> Result<Option<Metadata>, VaultError> {
        let (status, bytes) = self
            .send(Method::GET, &self.url("metadata", key), None)
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        let meta: Wrapped<Metadata> =
            serde_json::from_slice(&bytes).map_err(|_| malformed("metadata answer"))?;
        Ok(Some(meta.data))
    }

    /// Names in one folder (sub-folders end with `/`); empty when the folder does not exist.
    async fn list_folder(&self, key: &str) -> Result<Vec<String>, VaultError> {
        let url = format!("{}?list=true", self.url("metadata", key));
        let (status, bytes) = self.send(Method::GET, &url, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        let keys: Wrapped<Keys> =
            serde_json::from_slice(&bytes).map_err(|_| malformed("list answer"))?;
        Ok(keys.data.keys)
    }

    pub(super) async fn list(
        &self,
        tenant: TenantId,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<SecretInfo>, VaultError> {
        // Walk from the deepest folder the prefix names; filter the rest by text. The prefix
        // was checked (`SecretPath::check_prefix`): no `.`/`..` segment can leave the tenant's
        // folder. The walk is bounded.
        let start = prefix.rfind('/').map_or("", |i| &prefix[..=i]);
        let mut folders = vec![start.to_owned()];
        let mut paths: Vec<String> = Vec::new();
        let mut walked = 0;
        let too_large = || {
            VaultError::ListTooLarge(format!(
                "listing `{prefix}` would walk more than {MAX_LIST_FOLDERS} folders or \
                 {MAX_LIST_PATHS} paths; list a longer prefix"
            ))
        };
        while let Some(folder) = folders.pop() {
            walked += 1;
            if walked > MAX_LIST_FOLDERS {
                return Err(too_large());
            }
            let key = self.key(tenant, folder.trim_end_matches('/'));
            for name in self.list_folder(&key).await? {
                let full = format!("{folder}{name}");
                if name.ends_with('/') {
                    if full.starts_with(prefix) || prefix.starts_with(&full) {
                        folders.push(full);
                    }
                } else if full.starts_with(prefix) {
                    paths.push(full);
                }
            }
            if paths.len() > MAX_LIST_PATHS {
                return Err(too_large());
            }
        }
        paths.sort();
        paths.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            let Some(meta) = self.metadata(&self.key(tenant, &path)).await? else {
                continue;
            };
            let mut versions = Vec::new();
            for (number, state) in &meta.versions {
                if state.destroyed || !state.deletion_time.is_empty() {
                    continue;
                }
                let version = number.parse().map_err(|_| malformed("version number"))?;
                versions.push(SecretVersionInfo {
                    version,
                    created_at: parse_time(&state.created_time)?,
                });
            }
            if versions.is_empty() {
                continue;
            }
            versions.sort_by_key(|v| v.version);
            out.push(SecretInfo {
                path,
                latest_version: meta.current_version,
                versions,
                created_at: parse_time(&meta.created_time)?,
                updated_at: parse_time(&meta.updated_time)?,
            });
        }
        Ok(out)
    }

    pub(super) async fn delete(
        &self,
        tenant: TenantId,
        path: &SecretPath,
    ) -> Result<u32, VaultError> {
        let key = self.key(tenant, path.as_str());
        let meta = self
            .metadata(&key)
            .await?
            .ok_or_else(|| VaultError::NotFound {
                path: path.as_str().to_owned(),
                version: None,
            })?;
        let live = meta
            .versions
            .values()
            .filter(|s| !s.destroyed && s.deletion_time.is_empty())
            .count();
        let (status, bytes) = self
            .send(Method::DELETE, &self.url("metadata", &key), None)
            .await?;
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        Ok(u32::try_from(live).unwrap_or(u32::MAX))
    }
}
