//! Authentication of API callers by bearer key, the role check of each route, tenant scope, and
//! rate limits.
//!
//! Keys are `flt_<public id>_<secret>` with a 256-bit secret; the store keeps SHA-256 of the
//! secret, compared in constant time (a slow password hash buys nothing for secrets of that
//! entropy and would cost every request). Verified key records are cached briefly so the hot
//! path does not hit the store on every request; a revocation therefore takes effect within
//! [`CACHE_TTL`] on other replicas, and at once on the replica that revoked.

pub(crate) mod attempts;
pub mod bootstrap;
pub(crate) mod limits;
pub(crate) mod task_token;

use crate::audit::{Audit, AuditEvent, AuditOutcome};
use crate::clock::Clock;
use attempts::LiveAttempts;
use flotilla_core::Timestamp;
use flotilla_core::auth::{ApiKeyRecord, Permission, Role, parse_key};
use flotilla_core::config::RateLimits;
use flotilla_core::id::{TaskId, TenantId};
use flotilla_core::rate::Rate;
use flotilla_core::task_token::TokenKey;
use flotilla_store::{DynStore, StoreError};
use limits::RateLimiters;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Why a caller was refused. The HTTP layer maps each kind to its answer (`api/error.rs`, and
/// OpenAI's shape on the model gateway's routes).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No valid credentials (401); counted and audited as a failed authentication.
    #[error("{0}")]
    Unauthenticated(String),
    /// A genuine per-task token whose attempt is over (401), not a guess.
    #[error("{0}")]
    AttemptEnded(String),
    /// Valid credentials without the right to do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// `?tenant=` is not a tenant id (400).
    #[error("{0}")]
    InvalidTenant(String),
    /// A rate limit refused the request (429).
    #[error("{message}")]
    RateLimited { message: String, retry_after_s: u64 },
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who is calling: attached to every authenticated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The public id of the key (or, for a per-task model-gateway token, of the task's key).
    pub key_id: String,
    pub tenant_id: TenantId,
    pub role: Role,
    /// Set when the caller holds a per-task model-gateway token: such a caller may only call
    /// models, whatever its role.
    pub task: Option<TaskId>,
    /// The peer address of the connection, when known.
    pub source: Option<IpAddr>,
}

impl Caller {
    /// Fails with 403 unless the caller may do `permission` (`action` words the message).
    pub fn require(&self, permission: Permission, action: &str) -> Result<(), AuthError> {
        let allowed = match self.task {
            Some(_) => permission == Permission::CallModels,
            None => self.role.allows(permission),
        };
        if allowed {
            Ok(())
        } else if self.task.is_some() {
            Err(AuthError::Forbidden(format!(
                "a per-task model-gateway token may only call models, not {action}"
            )))
        } else {
            Err(AuthError::Forbidden(format!(
                "a key with role `{}` may not {action} (needs `{permission}`)",
                self.role
            )))
        }
    }
}

impl Caller {
    /// The tenant a request acts on: the caller's own, or with `?tenant=` another one, which only
    /// admin keys may name.
    pub fn scope(&self, requested: Option<&str>) -> Result<TenantId, AuthError> {
        let requested = requested
            .map(|text| {
                text.parse::<TenantId>().map_err(|_| {
                    AuthError::InvalidTenant(format!("`{text}` is not a tenant id (a UUID)"))
                })
            })
            .transpose()?;
        self.scope_id(requested)
    }

    /// [`Caller::scope`] with the tenant already parsed.
    pub fn scope_id(&self, requested: Option<TenantId>) -> Result<TenantId, AuthError> {
        match requested {
            None => Ok(self.tenant_id),
            Some(tenant)
                if tenant == self.tenant_id
                    || (self.role == Role::Admin && self.task.is_none()) =>
            {
                Ok(tenant)
            }
            Some(_) => Err(AuthError::Forbidden(
                "only admin keys may act on another tenant (`tenant`)".to_owned(),
            )),
        }
    }

    /// Whose share of data kept for every tenant (events, alerts, queues) the caller reads:
    /// `None` for the platform — admins and the keys of its default tenant — which reads all of
    /// it; otherwise its own tenant, which reads fleet facts and its own
    /// (`flotilla_core::event::visible_to`).
    pub fn reader(&self) -> Option<TenantId> {
        let platform = self.task.is_none()
            && (self.role == Role::Admin || self.tenant_id == TenantId::DEFAULT);
        (!platform).then_some(self.tenant_id)
    }
}

impl AuditEvent {
    /// A successful action by an authenticated caller.
    pub(crate) fn by(caller: &Caller, action: &'static str, target: impl Into<String>) -> Self {
        AuditEvent {
            action,
            target: target.into(),
            outcome: AuditOutcome::Success,
            actor: Some(caller.key_id.clone()),
            tenant_id: Some(caller.tenant_id),
            source: caller.source,
        }
    }
}

/// The `?tenant=` query parameter of routes that act on a tenant's objects.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TenantParam {
    /// Act on this tenant instead of the key's own (admin keys only).
    #[param(format = Uuid)]
    pub tenant: Option<String>,
}

/// SHA-256 of a key's secret part, hex.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// How long a verified key record is trusted without reading the store again.
pub const CACHE_TTL: Duration = Duration::from_secs(10);

/// Recently read key records by public id.
#[derive(Default)]
pub struct KeyCache {
    records: Mutex<HashMap<String, (Instant, ApiKeyRecord)>>,
}

impl KeyCache {
    fn get(&self, id: &str) -> Option<ApiKeyRecord> {
        let records = self.records.lock().ok()?;
        let (at, record) = records.get(id)?;
        (at.elapsed() < CACHE_TTL).then(|| record.clone())
    }

    /// Drops a key's record (after it was revoked here).
    pub fn forget(&self, id: &str) {
        if let Ok(mut records) = self.records.lock() {
            records.remove(id);
        }
    }

    fn put(&self, record: ApiKeyRecord) {
        if let Ok(mut records) = self.records.lock() {
            if records.len() > 10_000 {
                records.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            }
            records.insert(record.id.clone(), (Instant::now(), record));
        }
    }
}

/// Authentication as a service: verifies keys and per-task tokens, applies the key's and the
/// tenant's rate limits, throttles and audits failed attempts. The HTTP layer's middleware
/// (`api/authn.rs`) calls it before every `/v1` handler.
pub struct Access {
    pub(crate) rate_limits: RateLimits,
    pub(crate) store: DynStore,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) keys: Arc<KeyCache>,
    pub(crate) limits: Arc<RateLimiters>,
    /// Which attempts run: a per-task token is honoured only while its attempt does.
    pub(crate) attempts: Arc<LiveAttempts>,
    pub(crate) task_token_key: Arc<TokenKey>,
    pub(crate) audit: Arc<Audit>,
}

impl Access {
    /// Checks a presented bearer token against the store; the error says what was wrong
    /// without revealing whether a key id exists. Returns the caller and the key's own rate
    /// limit.
    pub async fn verify(
        &self,
        token: &str,
        now: Timestamp,
    ) -> Result<(Caller, Option<Rate>), AuthError> {
        let invalid =
            || AuthError::Unauthenticated("the API key is invalid, expired or revoked".to_owned());
        let presented = parse_key(token).ok_or_else(invalid)?;
        let record = match self.keys.get(presented.public_id) {
            Some(record) => record,
            None => {
                let record = self
                    .store
                    .get_api_key(presented.public_id)
                    .await?
                    .ok_or_else(invalid)?;
                self.keys.put(record.clone());
                record
            }
        };
        let matches: bool = hash_secret(presented.secret)
            .as_bytes()
            .ct_eq(record.secret_hash.as_bytes())
            .into();
        let live = record.revoked_at.is_none() && record.expires_at.is_none_or(|at| at > now);
        if !(matches && live) {
            return Err(invalid());
        }
        let caller = Caller {
            key_id: record.id,
            tenant_id: record.tenant_id,
            role: record.role,
            task: None,
            source: None,
        };
        Ok((caller, record.rate_limit))
    }

    /// Everything the API does before a handler runs: refuses a throttled source, verifies the
    /// bearer key (or per-task token), and counts the request against the key's and the
    /// tenant's rate limits. (The route's permission is checked after it, `api/routes.rs`.)
    /// A failed authentication is counted against the source and audited.
    pub async fn authenticate(
        &self,
        source: Option<IpAddr>,
        header: &str,
        path: &str,
    ) -> Result<Caller, AuthError> {
        let verdict = self.identify(source, header).await;
        if let Err(AuthError::Unauthenticated(_)) = &verdict {
            self.failed(source, header, path).await;
        }
        verdict
    }

    /// The caller a bearer header stands for (an API key or a per-task token), with the key's
    /// own rate limit.
    async fn credentials(&self, header: &str) -> Result<(Caller, Option<Rate>), AuthError> {
        match header.strip_prefix("Bearer ").map(str::trim) {
            Some(token) if task_token::is_task_token(token) => {
                let caller = task_token::authenticate(self, token, self.clock.now()).await?;
                Ok((caller, None))
            }
            Some(token) => self.verify(token, self.clock.now()).await,
            None => Err(AuthError::Unauthenticated(
                "this route needs an API key: send `Authorization: Bearer flt_…`".to_owned(),
            )),
        }
    }

    async fn identify(&self, source: Option<IpAddr>, header: &str) -> Result<Caller, AuthError> {
        // A throttled source is still served with a valid key: behind a shared address (a
        // proxy, a NAT) other clients' failures must not lock it out. Without one it gets 429,
        // not 401, and the attempt is neither counted nor audited again. The throttle is
        // consulted only once the credentials failed, so it costs a valid request nothing.
        let found = self.credentials(header).await;
        if let (Err(AuthError::Unauthenticated(_)), Some(ip)) = (&found, source)
            && let Some(wait) = self.limits.blocked(ip)
        {
            return Err(AuthError::RateLimited {
                message: format!(
                    "too many failed authentications from {ip}; retry later with a valid key"
                ),
                retry_after_s: limits::retry_after_secs(wait),
            });
        }
        let (mut caller, key_rate) = found?;
        caller.source = source;
        let defaults = self.rate_limits;
        let tenant_rate = self
            .limits
            .tenant_rate(&self.store, caller.tenant_id)
            .await?;
        self.limits
            .check_key(&caller.key_id, key_rate.or(defaults.per_key))
            .and_then(|()| {
                self.limits.check_tenant(
                    caller.tenant_id,
                    self.limits.effective_tenant_rate(
                        caller.tenant_id,
                        tenant_rate.or(defaults.per_tenant),
                    ),
                )
            })
            .map_err(|limited| AuthError::RateLimited {
                message: format!("rate limit exceeded: {}; retry later", limited.what),
                retry_after_s: limits::retry_after_secs(limited.retry_after),
            })?;
        Ok(caller)
    }

    /// Records a failed authentication: counted against the source, and audited (aggregated
    /// per source and minute) with the key's public id when one was presented (never the
    /// secret).
    async fn failed(&self, source: Option<IpAddr>, header: &str, path: &str) {
        if let Some(ip) = source {
            self.limits.auth_failed(ip);
        }
        let presented = header
            .strip_prefix("Bearer ")
            .and_then(|t| parse_key(t.trim()))
            .map(|k| k.public_id.to_owned());
        self.audit.failed_auth(source, presented, path).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_hash_to_stable_hex() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn roles_outside_the_list_are_forbidden() {
        let caller = Caller {
            key_id: "k".into(),
            tenant_id: TenantId::DEFAULT,
            role: Role::Viewer,
            task: None,
            source: None,
        };
        assert!(caller.require(Permission::ReadTasks, "read").is_ok());
        assert!(matches!(
            caller.require(Permission::SubmitTasks, "submit tasks"),
            Err(AuthError::Forbidden(_))
        ));
        let token = Caller {
            role: Role::Admin,
            task: Some(TaskId::from_uuid(uuid::Uuid::now_v7())),
            ..caller
        };
        assert!(token.require(Permission::CallModels, "call models").is_ok());
        assert!(token.require(Permission::ReadTasks, "read tasks").is_err());
    }
}
