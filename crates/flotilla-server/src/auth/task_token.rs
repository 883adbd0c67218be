//! Authentication by per-task model-gateway token (`ftk_…`, see
//! [`flotilla_core::task_token`]): the token an agent received in its `/execute` envelope.
//!
//! The caller it yields holds [`Role::Agent`] in the task's tenant with `task` set, so
//! `Caller::require` lets it call models and nothing else; its `key_id` names the task, never
//! the token. A token is honoured only while its attempt runs ([`super::attempts`]): after its
//! end it is refused with 401 `attempt_ended`, whatever its deadline.

use crate::auth::{Access, AuthError, Caller};
use flotilla_core::Timestamp;
use flotilla_core::auth::Role;
use flotilla_core::task_token::{self, TaskClaims, TokenError};

/// Whether a bearer token is a task token rather than an API key.
pub(crate) fn is_task_token(token: &str) -> bool {
    task_token::looks_like_token(token)
}

/// Verifies a task token at `now`, and that its attempt still runs, and returns the caller it
/// stands for.
pub(crate) async fn authenticate(
    state: &Access,
    token: &str,
    now: Timestamp,
) -> Result<Caller, AuthError> {
    let claims = task_token::verify(&state.task_token_key, token, now).map_err(|e| {
        AuthError::Unauthenticated(match e {
            TokenError::Expired => {
                "the task token has expired: it is valid until its attempt's deadline".to_owned()
            }
            TokenError::Malformed | TokenError::Invalid => "the task token is invalid".to_owned(),
        })
    })?;
    let live = state
        .attempts
        .is_live(
            state.store.as_ref(),
            claims.tenant_id,
            claims.task_id,
            claims.attempt,
        )
        .await?;
    if !live {
        tracing::debug!(task_id = %claims.task_id, attempt = claims.attempt, "Task token of an ended attempt refused");
        return Err(AuthError::AttemptEnded(format!(
            "the task token's attempt has ended: attempt {} of task {} is no longer running",
            claims.attempt, claims.task_id
        )));
    }
    Ok(caller(&claims))
}

/// The caller of a verified token.
fn caller(claims: &TaskClaims) -> Caller {
    Caller {
        key_id: format!("task:{}/{}", claims.task_id, claims.attempt),
        tenant_id: claims.tenant_id,
        role: Role::Agent,
        task: Some(claims.task_id),
        source: None,
    }
}
