//! Signatures of control plane → agent requests (docs/design.md §6).
//!
//! The control plane sends `x-flotilla-signature: t=<unix seconds>,v1=<hex MAC>` with every
//! `POST /execute`, where the MAC is HMAC-SHA256 keyed with the instance's signing secret (the
//! text the registration returned, as UTF-8 bytes) over `"<t>.<body>"`, the body being the exact
//! bytes sent. An agent checks the MAC in constant time and refuses timestamps further than a
//! skew from its own clock; remembering accepted MACs for that window (the SDK does) then makes
//! every signed request usable once.
//!
//! Pure functions: the caller passes `now`. Unknown `key=value` pairs in the header are ignored
//! so that a later scheme (`v2=`) can be sent beside `v1=` during an upgrade; several `v1=`
//! values are allowed, and one matching is enough (useful while a secret rotates).

use crate::Timestamp;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The request header that carries the signature.
pub const HEADER: &str = "x-flotilla-signature";

/// The skew between the signer's and the verifier's clocks accepted by default.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// Longest header accepted; real ones are under 100 bytes.
const MAX_HEADER_LEN: usize = 1024;

type HmacSha256 = Hmac<Sha256>;

/// A verified signature: when it was made and its MAC (not secret; the SDK remembers it to
/// refuse replays).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    /// The signed timestamp, in Unix seconds.
    pub t: i64,
    /// The MAC that matched.
    pub mac: [u8; 32],
}

/// Why a request's signature was refused. Each variant has a stable [`code`](Self::code) for
/// error bodies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The request carries no `x-flotilla-signature` header.
    #[error("the request is not signed: the x-flotilla-signature header is missing")]
    Missing,
    /// The header is not `t=<unix seconds>,v1=<64 hex digits>`.
    #[error("the x-flotilla-signature header is malformed: {0}")]
    Malformed(&'static str),
    /// No `v1` MAC matches the body and timestamp under the signing secret.
    #[error("the signature does not match the request (wrong secret or altered body)")]
    Mismatch,
    /// The timestamp is older than the allowed skew.
    #[error("the signature is stale: signed {age_s} s ago, more than the {max_skew_s} s allowed")]
    Stale { age_s: i64, max_skew_s: u64 },
    /// The timestamp lies further in the future than the allowed skew.
    #[error(
        "the signature is from the future: {ahead_s} s ahead, more than the {max_skew_s} s allowed"
    )]
    Future { ahead_s: i64, max_skew_s: u64 },
}

impl SignatureError {
    /// A snake_case code for the JSON error body.
    pub const fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed(_) => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
            SignatureError::Stale { .. } => "signature_stale",
            SignatureError::Future { .. } => "signature_from_future",
        }
    }
}

/// The MAC of `body` signed at `t`.
fn mac(secret: &[u8], t: i64, body: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The header value signing `body` at `now` with `secret`.
pub fn sign(secret: &[u8], body: &[u8], now: Timestamp) -> String {
    sign_at(secret, body, now.timestamp())
}

/// The header value signing `body` at Unix second `t` (tests sign at chosen instants).
pub fn sign_at(secret: &[u8], body: &[u8], t: i64) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body)))
}

/// The parts of a header: the timestamp and every `v1` MAC.
fn parse(header: &str) -> Result<(i64, Vec<[u8; 32]>), SignatureError> {
    if header.len() > MAX_HEADER_LEN {
        return Err(SignatureError::Malformed("longer than 1024 bytes"));
    }
    let mut t = None;
    let mut macs = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            return Err(SignatureError::Malformed(
                "expected comma-separated key=value pairs",
            ));
        };
        match key {
            "t" => {
                if t.is_some() {
                    return Err(SignatureError::Malformed("`t` appears twice"));
                }
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SignatureError::Malformed("`t` must be Unix seconds"));
                }
                t = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed("`t` must be Unix seconds"))?,
                );
            }
            "v1" => {
                let mut mac = [0u8; 32];
                hex::decode_to_slice(value, &mut mac)
                    .map_err(|_| SignatureError::Malformed("`v1` must be 64 hex digits"))?;
                macs.push(mac);
            }
            // Other schemes are ignored (see the module comment).
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed("`t=` is missing"))?;
    if macs.is_empty() {
        return Err(SignatureError::Malformed("`v1=` is missing"));
    }
    Ok((t, macs))
}

/// Checks the header of a request whose body is `body`: the MAC first (so a forger learns
/// nothing about the clock), then the timestamp against `now ± max_skew`.
pub fn verify(
    header: Option<&str>,
    secret: &[u8],
    body: &[u8],
    now: Timestamp,
    max_skew: Duration,
) -> Result<Signature, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let (t, macs) = parse(header)?;
    let expected = mac(secret, t, body);
    // Every candidate is compared, so the time taken does not say which one matched.
    let mut matched = None;
    for candidate in &macs {
        if bool::from(candidate.ct_eq(&expected)) {
            matched = Some(*candidate);
        }
    }
    let mac = matched.ok_or(SignatureError::Mismatch)?;
    let max_skew_s = max_skew.as_secs();
    let skew = i64::try_from(max_skew_s).unwrap_or(i64::MAX);
    let age = now.timestamp().saturating_sub(t);
    if age > skew {
        return Err(SignatureError::Stale {
            age_s: age,
            max_skew_s,
        });
    }
    if age < -skew {
        return Err(SignatureError::Future {
            ahead_s: age.saturating_neg(),
            max_skew_s,
        });
    }
    Ok(Signature { t, mac })
}

#[cfg(test)]
mod tests;
