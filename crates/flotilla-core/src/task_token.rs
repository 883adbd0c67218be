//! Per-task model-gateway tokens (docs/design.md §6): the `token` an agent finds in the `/execute`
//! envelope and uses as the bearer key of the model gateway.
//!
//! A token names one attempt of one task and its tenant, and expires with that attempt's
//! deadline. It is stateless, so every replica verifies it without a store read:
//! `ftk_<base64url(payload)>.<base64url(HMAC-SHA256(key, payload))>`, the key being derived for
//! this purpose alone. The `ftk_` prefix keeps it apart from API keys (`flt_…`), which
//! [`crate::auth::parse_key`] refuses it as. What such a caller may do is decided by
//! `Caller::require`: call models, nothing else.
//!
//! Pure functions: the caller passes `now`.

use crate::Timestamp;
use crate::id::{TaskId, TenantId};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// What every token starts with.
pub const PREFIX: &str = "ftk_";

/// Payload layout version.
const VERSION: u8 = 1;
/// version (1) + task id (16) + attempt (4) + tenant id (16) + expiry in Unix ms (8).
const PAYLOAD_LEN: usize = 45;
/// Longest token text accepted before decoding anything.
const MAX_TOKEN_LEN: usize = 256;

type HmacSha256 = Hmac<Sha256>;

/// The 32-byte key tokens are signed with; redacted in `Debug`.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub const fn new(bytes: [u8; 32]) -> TokenKey {
        TokenKey(bytes)
    }

    fn mac(&self, payload: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.0) else {
            return [0; 32];
        };
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// What a token grants: model calls on behalf of one attempt of one task, until `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskClaims {
    pub task_id: TaskId,
    pub attempt: i32,
    pub tenant_id: TenantId,
    /// The attempt's deadline; the token is refused from this instant on.
    pub expires_at: Timestamp,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `ftk_<payload>.<mac>` in base64url, or a payload of the wrong size or version.
    #[error("the task token is malformed")]
    Malformed,
    /// The MAC does not match: forged, altered, or signed with another key.
    #[error("the task token is invalid")]
    Invalid,
    /// The attempt's deadline has passed.
    #[error("the task token has expired")]
    Expired,
}

/// Issues the token of `claims`.
pub fn issue(key: &TokenKey, claims: &TaskClaims) -> String {
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[0] = VERSION;
    payload[1..17].copy_from_slice(claims.task_id.as_uuid().as_bytes());
    payload[17..21].copy_from_slice(&claims.attempt.to_be_bytes());
    payload[21..37].copy_from_slice(claims.tenant_id.as_uuid().as_bytes());
    payload[37..45].copy_from_slice(&claims.expires_at.timestamp_millis().to_be_bytes());
    let mac = key.mac(&payload);
    format!(
        "{PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(mac)
    )
}

/// Whether `text` claims to be a task token (the auth middleware routes on this).
pub fn looks_like_token(text: &str) -> bool {
    text.starts_with(PREFIX)
}

/// Verifies a token at `now`: the MAC in constant time, then the expiry.
pub fn verify(key: &TokenKey, token: &str, now: Timestamp) -> Result<TaskClaims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    let (payload, mac) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let mac = URL_SAFE_NO_PAD
        .decode(mac)
        .map_err(|_| TokenError::Malformed)?;
    let payload: [u8; PAYLOAD_LEN] = payload.try_into().map_err(|_| TokenError::Malformed)?;
    if mac.len() != 32 {
        return Err(TokenError::Malformed);
    }
    if !bool::from(key.mac(&payload).as_slice().ct_eq(&mac)) {
        return Err(TokenError::Invalid);
    }
    if payload[0] != VERSION {
        return Err(TokenError::Malformed);
    }
    let uuid = |range: std::ops::Range<usize>| {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&payload[range]);
        Uuid::from_bytes(bytes)
    };
    let mut attempt = [0u8; 4];
    attempt.copy_from_slice(&payload[17..21]);
    let mut expires = [0u8; 8];
    expires.copy_from_slice(&payload[37..45]);
    let expires_at = Timestamp::from_timestamp_millis(i64::from_be_bytes(expires))
        .ok_or(TokenError::Malformed)?;
    if now >= expires_at {
        return Err(TokenError::Expired);
    }
    Ok(TaskClaims {
        task_id: TaskId::from_uuid(uuid(1..17)),
        attempt: i32::from_be_bytes(attempt),
        tenant_id: TenantId::from_uuid(uuid(21..37)),
        expires_at,
    })
}

#[cfg(test)]
mod tests;
