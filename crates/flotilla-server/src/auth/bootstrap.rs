//! The bootstrap admin key: created at the first start (or taken from
//! `FLOTILLA_BOOTSTRAP_ADMIN_KEY`) so that a fresh control plane can be used at once.

use crate::auth::hash_secret;
use flotilla_core::Timestamp;
use flotilla_core::auth::{ApiKeyRecord, Role, format_key, parse_key};
use flotilla_core::id::TenantId;
use flotilla_store::{Store, StoreError};
use rand::Rng;
use rand::distr::Alphanumeric;

/// Why the bootstrap key could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// `FLOTILLA_BOOTSTRAP_ADMIN_KEY` is not of the form `flt_<id>_<secret>`.
    #[error("FLOTILLA_BOOTSTRAP_ADMIN_KEY must look like flt_<letters/digits>_<letters/digits>")]
    MalformedKey,
    /// `FLOTILLA_BOOTSTRAP_ADMIN_KEY`'s secret is shorter than a generated key's.
    #[error(
        "the secret of FLOTILLA_BOOTSTRAP_ADMIN_KEY (after the second `_`) has {0} characters; an admin key needs at least {MIN_BOOTSTRAP_SECRET} (for example flt_admin_ followed by the output of `tr -dc A-Za-z0-9 </dev/urandom | head -c 43`)"
    )]
    ShortSecret(usize),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key that was just created; the only moment its full text exists.
pub struct NewKey(pub String);

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewKey(<redacted>)")
    }
}

/// The shortest secret a bootstrap admin key may have: as long as a generated one (43 letters
/// and digits, about 256 bits), so that a preset admin key is no easier to guess.
pub const MIN_BOOTSTRAP_SECRET: usize = 43;

/// Generates a new random key: a 12-character public id and a 43-character secret (≥ 256 bits).
pub fn generate_key() -> String {
    new_key(
        TenantId::DEFAULT,
        Role::Admin,
        "",
        chrono::DateTime::UNIX_EPOCH,
    )
    .0
}

/// Ensures an admin key exists. With `preset` (from the environment) that key is stored if it is
/// not already; without, a key is generated only when the store has none. Returns the key when
/// one was created from nothing, so the caller can print it once.
pub async fn ensure_admin_key(
    store: &dyn Store,
    preset: Option<&str>,
    now: Timestamp,
) -> Result<Option<NewKey>, BootstrapError> {
    store
        .ensure_tenant(TenantId::DEFAULT, "default", now)
        .await?;
    let (text, generated) = match preset {
        Some(text) => (text.to_owned(), false),
        None if store.count_api_keys().await? == 0 => (generate_key(), true),
        None => return Ok(None),
    };
    let parts = parse_key(&text).ok_or(BootstrapError::MalformedKey)?;
    if parts.secret.len() < MIN_BOOTSTRAP_SECRET {
        return Err(BootstrapError::ShortSecret(parts.secret.len()));
    }
    if store.get_api_key(parts.public_id).await?.is_some() {
        return Ok(None);
    }
    let record = ApiKeyRecord {
        id: parts.public_id.to_owned(),
        tenant_id: TenantId::DEFAULT,
        role: Role::Admin,
        name: "bootstrap admin".to_owned(),
        secret_hash: hash_secret(parts.secret),
        created_at: now,
        expires_at: None,
        revoked_at: None,
        rate_limit: None,
    };
    store.insert_api_key(&record).await?;
    Ok(generated.then_some(NewKey(text)))
}

/// Creates a key for the control plane's own use (e.g. the agents the local provisioner starts)
/// and returns its text, which is never stored or shown.
pub async fn create_internal_key(
    store: &dyn Store,
    role: Role,
    name: &str,
    now: Timestamp,
) -> Result<String, BootstrapError> {
    let (text, record) = new_key(TenantId::DEFAULT, role, name, now);
    store.insert_api_key(&record).await?;
    Ok(text)
}

/// A new random key and the record to store for it (no expiry or rate limit of its own).
pub fn new_key(
    tenant_id: TenantId,
    role: Role,
    name: &str,
    now: Timestamp,
) -> (String, ApiKeyRecord) {
    let mut rng = rand::rng();
    let public: String = (&mut rng)
        .sample_iter(Alphanumeric)
        .take(12)
        .map(char::from)
        .collect::<String>()
        .to_ascii_lowercase();
    let secret: String = (&mut rng)
        .sample_iter(Alphanumeric)
        .take(43)
        .map(char::from)
        .collect();
    let record = ApiKeyRecord {
        id: public.clone(),
        tenant_id,
        role,
        name: name.to_owned(),
        secret_hash: hash_secret(&secret),
        created_at: now,
        expires_at: None,
        revoked_at: None,
        rate_limit: None,
    };
    (format_key(&public, &secret), record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        let parts = parse_key(&a);
        assert_eq!(
            parts.map(|p| (p.public_id.len(), p.secret.len())),
            Some((12, 43))
        );
    }
}
