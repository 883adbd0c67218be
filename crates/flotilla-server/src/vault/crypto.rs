//! Envelope encryption of one secret version: a random data key seals the value, the master key
//! seals (wraps) the data key. Both use XChaCha20-Poly1305 with a random 192-bit nonce and with
//! associated data naming the tenant, path and version, so a ciphertext or wrapped key moved to
//! another tenant, path or version fails to open. Blobs are `format byte || nonce || ciphertext`.

use super::master::MasterKey;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use flotilla_core::id::TenantId;
use zeroize::Zeroizing;

/// The first byte of every blob: this layout and algorithm.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;

/// A blob did not open: it was altered, moved, or sealed under another key.
#[derive(Debug, thiserror::Error)]
#[error(
    "the secret's ciphertext failed authentication (altered, moved to another path, version or tenant, or sealed under another key)"
)]
pub struct OpenFailed;

/// What one version stores.
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub wrapped_key: Vec<u8>,
}

/// Where a version belongs; bound into both AEADs.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    pub tenant: TenantId,
    pub path: &'a str,
    pub version: u32,
}

impl Binding<'_> {
    fn associated_data(&self, domain: &[u8]) -> Vec<u8> {
        let path = self.path.as_bytes();
        let mut ad = Vec::with_capacity(domain.len() + 16 + 8 + path.len() + 4);
        ad.extend_from_slice(domain);
        ad.push(0);
        ad.extend_from_slice(self.tenant.0.as_bytes());
        ad.extend_from_slice(&u64::try_from(path.len()).unwrap_or(u64::MAX).to_be_bytes());
        ad.extend_from_slice(path);
        ad.extend_from_slice(&self.version.to_be_bytes());
        ad
    }
}

const VALUE_DOMAIN: &[u8] = b"flotilla/secret-value/v1";
const KEY_DOMAIN: &[u8] = b"flotilla/secret-data-key/v1";

/// Sealing failed; XChaCha20-Poly1305 refuses only messages over 256 GiB.
#[derive(Debug, thiserror::Error)]
#[error("the secret could not be encrypted")]
pub struct SealFailed;

fn seal_with(key: &[u8; 32], plaintext: &[u8], ad: &[u8]) -> Result<Vec<u8>, SealFailed> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + 16);
    out.push(FORMAT_V1);
    out.extend_from_slice(&nonce);
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: ad,
            },
        )
        .map_err(|_| SealFailed)?;
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

fn open_with(key: &[u8; 32], blob: &[u8], ad: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenFailed> {
    let (&format, rest) = blob.split_first().ok_or(OpenFailed)?;
    if format != FORMAT_V1 || rest.len() < NONCE_LEN + 16 {
        return Err(OpenFailed);
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: ad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| OpenFailed)
}

/// Seals `value` under a fresh data key wrapped by `master`.
pub fn seal(master: &MasterKey, at: Binding<'_>, value: &[u8]) -> Result<Sealed, SealFailed> {
    let mut data_key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(data_key.as_mut());
    Ok(Sealed {
        ciphertext: seal_with(&data_key, value, &at.associated_data(VALUE_DOMAIN))?,
        wrapped_key: wrap(master, at, &data_key)?,
    })
}

/// Opens a value: unwraps its data key with `master`, then the value.
pub fn open(
    master: &MasterKey,
    at: Binding<'_>,
    wrapped_key: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenFailed> {
    let data_key = unwrap(master, at, wrapped_key)?;
    open_with(&data_key, ciphertext, &at.associated_data(VALUE_DOMAIN))
}

/// Wraps a data key with `master`.
pub fn wrap(
    master: &MasterKey,
    at: Binding<'_>,
    data_key: &[u8; 32],
) -> Result<Vec<u8>, SealFailed> {
    seal_with(master.bytes(), data_key, &at.associated_data(KEY_DOMAIN))
}

/// Unwraps a data key with `master`.
pub fn unwrap(
    master: &MasterKey,
    at: Binding<'_>,
    wrapped_key: &[u8],
) -> Result<Zeroizing<[u8; 32]>, OpenFailed> {
    let bytes = open_with(master.bytes(), wrapped_key, &at.associated_data(KEY_DOMAIN))?;
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| OpenFailed)?;
    Ok(Zeroizing::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(path: &str, version: u32) -> Binding<'_> {
        Binding {
            tenant: TenantId::DEFAULT,
            path,
            version,
        }
    }

    #[test]
    fn a_sealed_value_opens_only_where_it_was_sealed() {
        let master = MasterKey::new([9; 32]);
        let Ok(sealed) = seal(&master, at("db/pw", 2), b"hunter2") else {
            unreachable!()
        };
        let opened = open(
            &master,
            at("db/pw", 2),
            &sealed.wrapped_key,
            &sealed.ciphertext,
        );
        assert_eq!(
            opened.ok().as_deref().map(Vec::as_slice),
            Some(&b"hunter2"[..])
        );
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        for wrong in [at("db/pw2", 2), at("db/pw", 3)] {
            assert!(open(&master, wrong, &sealed.wrapped_key, &sealed.ciphertext).is_err());
        }
        let other_tenant = Binding {
            tenant: TenantId(uuid::Uuid::now_v7()),
            ..at("db/pw", 2)
        };
        assert!(
            open(
                &master,
                other_tenant,
                &sealed.wrapped_key,
                &sealed.ciphertext
            )
            .is_err()
        );
        let other_master = MasterKey::new([8; 32]);
        assert!(
            open(
                &other_master,
                at("db/pw", 2),
                &sealed.wrapped_key,
                &sealed.ciphertext
            )
            .is_err()
        );
    }

    #[test]
    fn any_flipped_bit_fails() {
        let master = MasterKey::new([9; 32]);
        let Ok(sealed) = seal(&master, at("k", 1), b"value") else {
            unreachable!()
        };
        for i in 0..sealed.ciphertext.len() {
            let mut tampered = sealed.ciphertext.clone();
            tampered[i] ^= 0x01;
            assert!(
                open(&master, at("k", 1), &sealed.wrapped_key, &tampered).is_err(),
                "byte {i}"
            );
        }
        for i in 0..sealed.wrapped_key.len() {
            let mut tampered = sealed.wrapped_key.clone();
            tampered[i] ^= 0x80;
            assert!(
                open(&master, at("k", 1), &tampered, &sealed.ciphertext).is_err(),
                "byte {i}"
            );
        }
        assert!(open(&master, at("k", 1), &sealed.wrapped_key, &[]).is_err());
    }

    #[test]
    fn rewrapping_keeps_the_value_readable_under_the_new_key() {
        let (old, new) = (MasterKey::new([1; 32]), MasterKey::new([2; 32]));
        let Ok(sealed) = seal(&old, at("k", 1), b"value") else {
            unreachable!()
        };
        let data_key = unwrap(&old, at("k", 1), &sealed.wrapped_key);
        let Ok(data_key) = data_key else {
            unreachable!()
        };
        let Ok(rewrapped) = wrap(&new, at("k", 1), &data_key) else {
            unreachable!()
        };
        assert!(open(&new, at("k", 1), &rewrapped, &sealed.ciphertext).is_ok());
        assert!(open(&old, at("k", 1), &rewrapped, &sealed.ciphertext).is_err());
    }
}
