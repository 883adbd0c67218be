//! The master key: where it comes from, its id, and the keys derived from it.
//!
//! Sources, first match wins:
//! 1. `FLOTILLA_MASTER_KEY` (the current key) with `FLOTILLA_PREVIOUS_MASTER_KEYS` (older keys
//!    still accepted for reading, comma-separated);
//! 2. `[vault] master_key_file`: the first key line is current, further lines are previous keys
//!    (`#` comments and blank lines are ignored);
//! 3. on embedded SQLite, `master.key` beside the database (by default `<data_dir>/master.key`),
//!    generated with 0600 permissions on the first start;
//! 4. otherwise (PostgreSQL without a key) an ephemeral key: secrets cannot be stored, and keys
//!    derived for other purposes last only as long as this process.
//!
//! A key is 32 bytes written as 64 hex digits or as base64 (standard or URL-safe alphabet,
//! padding optional). Its id is a fingerprint (HKDF of the key), so ids need no bookkeeping and
//! the same key always has the same id.

use super::{Environment, VaultError};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The environment variable holding the current master key.
pub const MASTER_KEY_VAR: &str = "FLOTILLA_MASTER_KEY";
/// The environment variable holding previous master keys (comma-separated), during a rotation.
pub const PREVIOUS_MASTER_KEYS_VAR: &str = "FLOTILLA_PREVIOUS_MASTER_KEYS";
/// Name of the generated key file of an embedded store.
pub const GENERATED_KEY_FILE: &str = "master.key";

/// One master key with its id.
pub struct MasterKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn new(key: [u8; 32]) -> MasterKey {
        let key = Zeroizing::new(key);
        let mut id = [0u8; 8];
        expand(&key, b"flotilla/master-key-id/v1", &mut id);
        MasterKey {
            id: hex::encode(id),
            key,
        }
    }

    /// A fresh random key.
    pub fn generate() -> MasterKey {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut());
        MasterKey::new(*key)
    }

    /// Parses 64 hex digits or base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<MasterKey, String> {
        let text = text.trim();
        let bytes = Zeroizing::new(
            if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                hex::decode(text).map_err(|_| "not hex".to_owned())?
            } else {
                let unpadded = text.trim_end_matches('=');
                URL_SAFE_NO_PAD
                    .decode(unpadded.replace('+', "-").replace('/', "_"))
                    .map_err(|_| "neither 64 hex digits nor base64".to_owned())?
            },
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("a master key has 32 bytes, this one {}", bytes.len()))?;
        Ok(MasterKey::new(key))
    }

    /// The key's fingerprint, recorded beside every data key it wraps.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// The key as written in key files and `FLOTILLA_MASTER_KEY` (standard base64).
    fn encoded(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.key.as_ref()))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// HKDF-SHA256 (salt fixed per use) of `ikm` into `out`.
fn expand(ikm: &[u8; 32], info: &[u8], out: &mut [u8]) {
    let hk = Hkdf::<Sha256>::new(Some(b"flotilla/vault"), ikm);
    #[expect(
        clippy::expect_used,
        reason = "HKDF-Expand fails only for outputs longer than 255 × 32 bytes; ours are 8 or 32"
    )]
    hk.expand(info, out).expect("HKDF output length is valid");
}

/// Where the master keys came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `FLOTILLA_MASTER_KEY`.
    Environment,
    /// A key file named in the configuration, or the embedded store's file.
    File(PathBuf),
    /// Generated at this start into this file.
    Generated(PathBuf),
    /// Random for this process only (no key configured, not embedded).
    Ephemeral,
}

/// The current master key and the previous ones still accepted for reading.
pub struct MasterKeys {
    current: MasterKey,
    previous: Vec<MasterKey>,
    source: KeySource,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeys")
            .field("current", &self.current.id)
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .field("source", &self.source)
            .finish()
    }
}

impl MasterKeys {
    /// Keys given directly (tests, tools).
    pub fn new(current: MasterKey, previous: Vec<MasterKey>, source: KeySource) -> MasterKeys {
        MasterKeys {
            current,
            previous,
            source,
        }
    }

    /// The key new data keys are wrapped with.
    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    /// The key with this id, current or previous.
    pub fn by_id(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }

    /// Ids of every accepted key, the current one first.
    pub fn ids(&self) -> Vec<&str> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(MasterKey::id)
            .collect()
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// False for an ephemeral key, which must not protect stored secrets.
    pub fn is_persistent(&self) -> bool {
        self.source != KeySource::Ephemeral
    }

    /// A 32-byte key for `purpose` (e.g. `"task-token"`), derived from the current master key
    /// with HKDF-SHA256. Distinct purposes get independent keys; rotating the master key changes
    /// every derived key.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        derive_from(&self.current, purpose)
    }

    /// The audit log's MAC key, from the current master key.
    pub fn audit_key(&self) -> flotilla_core::audit::MacKey {
        audit_key(&self.current)
    }

    /// The audit MAC keys of every configured master key, the current one first.
    pub fn audit_keys(&self) -> Vec<flotilla_core::audit::MacKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(audit_key)
            .collect()
    }
}

/// The purpose the audit log's MAC key is derived for.
const AUDIT: &str = "audit-mac";

fn audit_key(key: &MasterKey) -> flotilla_core::audit::MacKey {
    flotilla_core::audit::MacKey::new(key.id(), derive_from(key, AUDIT))
}

fn derive_from(key: &MasterKey, purpose: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    let info = [b"flotilla/derive/v1/".as_slice(), purpose.as_bytes()].concat();
    expand(key.bytes(), &info, &mut out);
    out
}

/// Finds the master keys as the module documentation says. `embedded_dir` is the directory of
/// the embedded SQLite database, `None` on PostgreSQL.
pub fn load(
    key_file: Option<&Path>,
    embedded_dir: Option<&Path>,
    env: &dyn Environment,
) -> Result<MasterKeys, VaultError> {
    if let Some(current) = env.var(MASTER_KEY_VAR).filter(|v| !v.trim().is_empty()) {
        let current = Zeroizing::new(current);
        let current = MasterKey::parse(&current).map_err(|e| {
            VaultError::MasterKey(format!("{MASTER_KEY_VAR} is not a valid master key: {e}"))
        })?;
        let previous = Zeroizing::new(env.var(PREVIOUS_MASTER_KEYS_VAR).unwrap_or_default());
        let previous = previous
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .enumerate()
            .map(|(i, k)| {
                MasterKey::parse(k).map_err(|e| {
                    VaultError::MasterKey(format!(
                        "entry {} of {PREVIOUS_MASTER_KEYS_VAR} is not a valid master key: {e}",
                        i + 1
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(MasterKeys::new(current, previous, KeySource::Environment));
    }
    let (path, may_generate) = match (key_file, embedded_dir) {
        (Some(path), embedded) => (path.to_owned(), embedded.is_some()),
        (None, Some(dir)) => (dir.join(GENERATED_KEY_FILE), true),
        (None, None) => {
            tracing::warn!(
                "No master key configured ({MASTER_KEY_VAR} or [vault] master_key_file): the built-in vault cannot store secrets, and keys derived from the master key last only until restart"
            );
            return Ok(MasterKeys::new(
                MasterKey::generate(),
                Vec::new(),
                KeySource::Ephemeral,
            ));
        }
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => read_key_file(&path, &Zeroizing::new(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_generate => {
            let key = MasterKey::generate();
            if !write_key_file(&path, &key)? {
                // Another process sharing the database created it first: use theirs.
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    VaultError::MasterKey(format!(
                        "cannot read the master key file {}: {e}",
                        path.display()
                    ))
                })?;
                return read_key_file(&path, &Zeroizing::new(text));
            }
            tracing::warn!(
                path = %path.display(),
                master_key_id = key.id(),
                "Generated a new master key for the vault. Back this file up and keep it apart from database backups: without it, stored secrets cannot be read"
            );
            Ok(MasterKeys::new(key, Vec::new(), KeySource::Generated(path)))
        }
        Err(e) => Err(VaultError::MasterKey(format!(
            "cannot read the master key file {}: {e}",
            path.display()
        ))),
    }
}

fn read_key_file(path: &Path, text: &str) -> Result<MasterKeys, VaultError> {
    check_permissions(path);
    let mut keys = text
        .lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(n, line)| {
            MasterKey::parse(line).map_err(|e| {
                VaultError::MasterKey(format!(
                    "{} line {}: not a valid master key: {e}",
                    path.display(),
                    n + 1
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();
    let current = keys
        .next()
        .ok_or_else(|| VaultError::MasterKey(format!("{} holds no master key", path.display())))?;
    Ok(MasterKeys::new(
        current,
        keys.collect(),
        KeySource::File(path.to_owned()),
    ))
}

/// Warns when others than the owner may read the key file.
fn check_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "The master key file is readable by other users; restrict it with chmod 600"
        );
    }
}

/// Creates the key file readable by its owner only, never overwriting one; false when it
/// already existed. The key is written and synced under a temporary name, then hard-linked into
/// place, so no process ever reads a half-written key file.
fn write_key_file(path: &Path, key: &MasterKey) -> Result<bool, VaultError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| {
        VaultError::MasterKey(format!(
            "cannot create the master key file {}: {e}",
            path.display()
        ))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let temporary = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(fail)?;
    let line = Zeroizing::new(format!(
        "# Flotilla vault master key (id {}). Back it up; keep it secret.\n{}\n",
        key.id(),
        key.encoded().as_str()
    ));
    let written = file
        .write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match written {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(fail(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn hex_and_base64_give_the_same_key() {
        let bytes = [7u8; 32];
        let hex_key = MasterKey::parse(&hex::encode(bytes)).map(|k| k.id);
        let b64 = MasterKey::parse(&STANDARD.encode(bytes)).map(|k| k.id);
        let url = MasterKey::parse(&URL_SAFE_NO_PAD.encode(bytes)).map(|k| k.id);
        assert_eq!(hex_key, b64);
        assert_eq!(b64, url);
        assert!(MasterKey::parse("c2hvcnQ=").is_err());
        assert!(MasterKey::parse("not a key").is_err());
    }

    #[test]
    fn debug_shows_ids_only() {
        let key = MasterKey::new([0x42; 32]);
        let debug = format!("{key:?}");
        assert!(debug.contains(key.id()));
        assert!(!debug.contains(&hex::encode([0x42; 32])));
        assert!(!debug.contains(key.encoded().as_str()));
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_master_key() {
        let keys = MasterKeys::new(MasterKey::new([1; 32]), Vec::new(), KeySource::Environment);
        let other = MasterKeys::new(MasterKey::new([2; 32]), Vec::new(), KeySource::Environment);
        assert_eq!(keys.derive("task-token"), keys.derive("task-token"));
        assert_ne!(keys.derive("task-token"), keys.derive("other"));
        assert_ne!(keys.derive("task-token"), other.derive("task-token"));
        assert_ne!(keys.derive("task-token"), [1; 32]);
    }

    #[test]
    fn the_environment_wins_and_lists_previous_keys() {
        let env: HashMap<String, String> = [
            (MASTER_KEY_VAR.to_owned(), hex::encode([1u8; 32])),
            (
                PREVIOUS_MASTER_KEYS_VAR.to_owned(),
                format!("{}, {}", STANDARD.encode([2u8; 32]), hex::encode([3u8; 32])),
            ),
        ]
        .into();
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else { return };
        let keys = load(None, Some(dir.path()), &env);
        let Ok(keys) = keys else {
            unreachable!("{keys:?}")
        };
        assert_eq!(keys.current().id(), MasterKey::new([1; 32]).id());
        assert!(keys.by_id(MasterKey::new([3; 32]).id()).is_some());
        assert!(!dir.path().join(GENERATED_KEY_FILE).exists());
    }

    #[test]
    fn an_embedded_store_generates_a_private_key_file_once() {
        use std::os::unix::fs::PermissionsExt;
        let Ok(dir) = tempfile::tempdir() else { return };
        let env: HashMap<String, String> = HashMap::new();
        let first = load(None, Some(&dir.path().join("data")), &env);
        let Ok(first) = first else {
            unreachable!("{first:?}")
        };
        let path = dir.path().join("data").join(GENERATED_KEY_FILE);
        assert_eq!(first.source(), &KeySource::Generated(path.clone()));
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        let second = load(None, Some(&dir.path().join("data")), &env);
        let Ok(second) = second else {
            unreachable!("{second:?}")
        };
        assert_eq!(second.current().id(), first.current().id());
        assert_eq!(second.source(), &KeySource::File(path));
        // Without an embedded store nothing is generated.
        let ephemeral = load(None, None, &env);
        assert!(matches!(ephemeral, Ok(k) if !k.is_persistent()));
    }
}
