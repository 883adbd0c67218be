//! Authentication of API callers by bearer key, and the role check of each route.
//!
//! Keys are `flt_<public id>_<secret>`; the store keeps SHA-256 of the secret, compared in
//! constant time. Verified keys are cached briefly so the hot path does not hit the store on
//! every request. Tenants, key management and the full permission table come with the security
//! issue; until then every key belongs to the default tenant.

pub mod bootstrap;

use crate::api::error::ApiError;
use crate::app::AppState;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use flotilla_core::Timestamp;
use flotilla_core::auth::{ApiKeyRecord, Permission, Role, parse_key};
use flotilla_core::id::{TaskId, TenantId};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

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
    pub fn require(&self, permission: Permission, action: &str) -> Result<(), ApiError> {
        let allowed = match self.task {
            Some(_) => permission == Permission::CallModels,
            None => self.role.allows(permission),
        };
        if allowed {
            Ok(())
        } else if self.task.is_some() {
            Err(ApiError::Forbidden(format!(
                "a per-task model-gateway token may only call models, not {action}"
            )))
        } else {
            Err(ApiError::Forbidden(format!(
                "a key with role `{}` may not {action} (needs `{permission}`)",
                self.role
            )))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthenticated("this route needs an API key".to_owned()))
    }
}

/// SHA-256 of a key's secret part, hex.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// How long a verified key record is trusted without reading the store again.
const CACHE_TTL: Duration = Duration::from_secs(10);

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

    fn put(&self, record: ApiKeyRecord) {
        if let Ok(mut records) = self.records.lock() {
            if records.len() > 10_000 {
                records.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            }
            records.insert(record.id.clone(), (Instant::now(), record));
        }
    }
}

/// Checks a presented bearer token against the store; the error says what was wrong without
/// revealing whether a key id exists.
pub async fn verify(state: &AppState, token: &str, now: Timestamp) -> Result<Caller, ApiError> {
    let invalid =
        || ApiError::Unauthenticated("the API key is invalid, expired or revoked".to_owned());
    let presented = parse_key(token).ok_or_else(invalid)?;
    let record = match state.keys.get(presented.public_id) {
        Some(record) => record,
        None => {
            let record = state
                .store
                .get_api_key(presented.public_id)
                .await?
                .ok_or_else(invalid)?;
            state.keys.put(record.clone());
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
    Ok(Caller {
        key_id: record.id,
        tenant_id: record.tenant_id,
        role: record.role,
        task: None,
        source: None,
    })
}

/// Middleware on `/v1`: every request needs `Authorization: Bearer <key>`.
pub async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(token) = header.strip_prefix("Bearer ").map(str::trim) else {
        return Err(ApiError::Unauthenticated(
            "this route needs an API key: send `Authorization: Bearer flt_…`".to_owned(),
        ));
    };
    let caller = verify(&state, token, state.clock.now()).await?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
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
            Err(ApiError::Forbidden(_))
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
