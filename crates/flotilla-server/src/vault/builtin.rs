//! The built-in backend: secrets sealed in Flotilla's own database (see [`super::crypto`]).
//! Only ciphertexts and wrapped data keys reach the store.

use super::crypto::{self, Binding};
use super::{MasterKeys, Secret, SecretPath, VaultError, Written, stored_time};
use flotilla_core::Timestamp;
use flotilla_core::id::TenantId;
use flotilla_core::wire::{RewrapReport, SecretInfo, SecretVersionInfo};
use flotilla_store::{DynStore, SealedSecret, SecretCursor};
use secrecy::{ExposeSecret, SecretString};

/// How often a write retries when another writer of the same path took its version number.
const WRITE_ATTEMPTS: u32 = 8;
/// Data keys re-wrapped per store page.
const REWRAP_PAGE: u32 = 200;

pub(super) struct Builtin {
    store: DynStore,
}

impl Builtin {
    pub(super) fn new(store: DynStore) -> Builtin {
        Builtin { store }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, each argument distinct"
    )]
    pub(super) async fn put(
        &self,
        master: &MasterKeys,
        keep: u32,
        tenant: TenantId,
        path: &SecretPath,
        value: &SecretString,
        actor: Option<&str>,
        now: Timestamp,
    ) -> Result<Written, VaultError> {
        if !master.is_persistent() {
            return Err(VaultError::NoMasterKey);
        }
        let key = master.current();
        for _ in 0..WRITE_ATTEMPTS {
            let last = self
                .store
                .last_secret_version(tenant, path.as_str())
                .await?
                .unwrap_or(0);
            let version = last.checked_add(1).ok_or_else(|| {
                VaultError::InvalidValue(format!("secret `{path}` has no version numbers left"))
            })?;
            let at = Binding {
                tenant,
                path: path.as_str(),
                version,
            };
            let sealed = crypto::seal(key, at, value.expose_secret().as_bytes())?;
            let record = SealedSecret {
                tenant_id: tenant,
                path: path.as_str().to_owned(),
                version,
                ciphertext: sealed.ciphertext,
                wrapped_key: sealed.wrapped_key,
                master_key_id: key.id().to_owned(),
                created_at: now,
                created_by: actor.map(str::to_owned),
            };
            if self.store.insert_secret_version(&record, keep).await? {
                return Ok(Written {
                    version,
                    created_at: stored_time(now),
                });
            }
        }
        Err(VaultError::Conflict(path.as_str().to_owned()))
    }

    pub(super) async fn get(
        &self,
        master: &MasterKeys,
        tenant: TenantId,
        path: &SecretPath,
        version: Option<u32>,
    ) -> Result<Secret, VaultError> {
        let not_found = || VaultError::NotFound {
            path: path.as_str().to_owned(),
            version,
        };
        let sealed = self
            .store
            .get_secret_version(tenant, path.as_str(), version)
            .await?
            .ok_or_else(not_found)?;
        let key =
            master
                .by_id(&sealed.master_key_id)
                .ok_or_else(|| VaultError::UnknownMasterKey {
                    path: path.as_str().to_owned(),
                    version: sealed.version,
                    id: sealed.master_key_id.clone(),
                })?;
        // The binding is what was asked for (tenant, path) and the version the row claims; a
        // row moved or renumbered in the database fails here.
        let at = Binding {
            tenant,
            path: path.as_str(),
            version: sealed.version,
        };
        let tampered = |source| VaultError::Tampered {
            path: path.as_str().to_owned(),
            version: sealed.version,
            source,
        };
        let plaintext =
            crypto::open(key, at, &sealed.wrapped_key, &sealed.ciphertext).map_err(tampered)?;
        let text = std::str::from_utf8(&plaintext).map_err(|_| tampered(crypto::OpenFailed))?;
        Ok(Secret {
            path: path.as_str().to_owned(),
            version: sealed.version,
            created_at: sealed.created_at,
            value: SecretString::from(text.to_owned()),
        })
    }

    pub(super) async fn list(
        &self,
        tenant: TenantId,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<SecretInfo>, VaultError> {
        let summaries = self.store.list_secrets(tenant, prefix, limit).await?;
        Ok(summaries
            .into_iter()
            .map(|s| SecretInfo {
                path: s.path,
                latest_version: s.latest_version,
                versions: s
                    .versions
                    .into_iter()
                    .map(|(version, created_at)| SecretVersionInfo {
                        version,
                        created_at,
                    })
                    .collect(),
                created_at: s.created_at,
                updated_at: s.updated_at,
            })
            .collect())
    }

    pub(super) async fn delete(
        &self,
        tenant: TenantId,
        path: &SecretPath,
        now: Timestamp,
    ) -> Result<u32, VaultError> {
        self.store
            .delete_secret(tenant, path.as_str(), now)
            .await?
            .ok_or_else(|| VaultError::NotFound {
                path: path.as_str().to_owned(),
                version: None,
            })
    }

    pub(super) async fn rewrap(&self, master: &MasterKeys) -> Result<RewrapReport, VaultError> {
        if !master.is_persistent() {
            return Err(VaultError::NoMasterKey);
        }
        let current = master.current();
        let (mut rewrapped, mut unreadable) = (0u64, 0u64);
        let mut after: Option<SecretCursor> = None;
        loop {
            let page = self
                .store
                .secret_keys_to_rewrap(current.id(), after.as_ref(), REWRAP_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.cursor());
            for old in &page {
                let at = Binding {
                    tenant: old.tenant_id,
                    path: &old.path,
                    version: old.version,
                };
                let Some(old_master) = master.by_id(&old.master_key_id) else {
                    unreadable += 1;
                    continue;
                };
                let data_key = match crypto::unwrap(old_master, at, &old.wrapped_key) {
                    Ok(key) => key,
                    Err(_) => {
                        tracing::error!(
                            tenant = %old.tenant_id,
                            path = %old.path,
                            version = old.version,
                            "A stored data key failed authentication; it was left as it is"
                        );
                        unreadable += 1;
                        continue;
                    }
                };
                let wrapped = crypto::wrap(current, at, &data_key)?;
                // A concurrent rewrap or deletion may have got there first; either is fine.
                if self
                    .store
                    .rewrap_secret_key(old, &wrapped, current.id())
                    .await?
                {
                    rewrapped += 1;
                }
            }
        }
        tracing::info!(
            master_key_id = current.id(),
            rewrapped,
            unreadable,
            "Re-wrapped data keys with the current master key"
        );
        Ok(RewrapReport {
            master_key_id: current.id().to_owned(),
            rewrapped,
            unreadable,
        })
    }
}
