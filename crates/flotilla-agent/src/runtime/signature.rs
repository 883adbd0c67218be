//! Verification of the control plane's request signatures (docs/design.md §6) and the memory of
//! accepted ones that makes each signed request usable once.
//!
//! The secret comes from the registration, which happens after the server starts (the control
//! plane must be able to reach the instance as soon as it learns of it), and changes when the
//! instance registers again; until the first registration every `/execute` is refused.

use flotilla_core::signature::{self, Signature, SignatureError};
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

/// Accepted signatures remembered at most; past this (after forgetting those older than the
/// skew window) new requests are refused with 503 rather than risk accepting a replay. At the
/// default five-minute window that is over 300 accepted requests a second on one instance, far
/// beyond what an agent's capacity allows; it bounds memory to a few megabytes.
pub(crate) const MAX_REMEMBERED: usize = 100_000;

/// Why a request is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// The signature itself is wrong (401).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The same signed request was accepted before (401).
    #[error("this signed request was already accepted once; a replay is refused")]
    Replayed,
    /// The instance has not registered yet, so it has no secret to verify with (401).
    #[error("this instance is not registered yet and cannot verify requests; retry later")]
    NotRegistered,
    /// Too many signatures inside the window to remember another one (503).
    #[error("too many requests inside the signature window; retry later or elsewhere")]
    WindowFull,
}

impl Refused {
    /// The snake_case code of the error body.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Refused::Signature(e) => e.code(),
            Refused::Replayed => "signature_replayed",
            Refused::NotRegistered => "not_registered",
            Refused::WindowFull => "signature_window_full",
        }
    }
}

/// The current signing secret and the signatures accepted within the skew window.
pub(crate) struct Verifier {
    max_skew: Duration,
    secret: RwLock<Option<String>>,
    seen: Mutex<Seen>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("max_skew", &self.max_skew)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Accepted MACs, in arrival order (for forgetting) and as a set (for lookup).
#[derive(Default)]
struct Seen {
    order: VecDeque<(i64, [u8; 32])>,
    set: HashSet<[u8; 32]>,
}

impl Verifier {
    pub(crate) fn new(max_skew: Duration) -> Verifier {
        Verifier {
            max_skew,
            secret: RwLock::new(None),
            seen: Mutex::default(),
        }
    }

    /// Uses `secret` from now on (after a registration).
    pub(crate) fn set_secret(&self, secret: String) {
        *self.secret.write().unwrap_or_else(PoisonError::into_inner) = Some(secret);
    }

    /// Checks the signature header of a request with body `body`, at Unix time `now`, and
    /// remembers it so that it is accepted only once.
    pub(crate) fn check(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), Refused> {
        let verified = {
            let secret = self.secret.read().unwrap_or_else(PoisonError::into_inner);
            let secret = secret.as_deref().ok_or(Refused::NotRegistered)?;
            signature::verify(header, secret.as_bytes(), body, now, self.max_skew)?
        };
        self.remember(verified, now.timestamp())
    }

    fn remember(&self, verified: Signature, now: i64) -> Result<(), Refused> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = &mut *seen;
        // A signature older than the window is refused as stale anyway: forget it. Arrival order
        // is nearly timestamp order; one arriving out of order is merely kept a little longer.
        let horizon = now.saturating_sub(i64::try_from(self.max_skew.as_secs()).unwrap_or(0));
        while let Some(&(t, mac)) = seen.order.front() {
            if t >= horizon {
                break;
            }
            seen.order.pop_front();
            seen.set.remove(&mac);
        }
        if seen.set.contains(&verified.mac) {
            return Err(Refused::Replayed);
        }
        if seen.set.len() >= MAX_REMEMBERED {
            return Err(Refused::WindowFull);
        }
        seen.set.insert(verified.mac);
        seen.order.push_back((verified.t, verified.mac));
        Ok(())
    }

    /// Signatures remembered now (tests).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set
            .len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(t: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc.timestamp_opt(t, 0).single().unwrap()
    }

    #[test]
    fn unregistered_instances_refuse_everything() {
        let verifier = Verifier::new(Duration::from_secs(300));
        let header = signature::sign_at(b"s", b"{}", 1000);
        assert!(matches!(
            verifier.check(Some(&header), b"{}", at(1000)),
            Err(Refused::NotRegistered)
        ));
    }

    #[test]
    fn each_signature_is_accepted_once_and_forgotten_after_the_window() {
        let verifier = Verifier::new(Duration::from_secs(300));
        verifier.set_secret("s".into());
        let first = signature::sign_at(b"s", b"{}", 1000);
        assert!(verifier.check(Some(&first), b"{}", at(1000)).is_ok());
        assert!(matches!(
            verifier.check(Some(&first), b"{}", at(1001)),
            Err(Refused::Replayed)
        ));
        // Later, the old one is both stale and forgotten: memory stays bounded by the window.
        let later = signature::sign_at(b"s", b"{}", 1400);
        assert!(verifier.check(Some(&later), b"{}", at(1400)).is_ok());
        assert_eq!(verifier.remembered(), 1);
        assert!(matches!(
            verifier.check(Some(&first), b"{}", at(1400)),
            Err(Refused::Signature(SignatureError::Stale { .. }))
        ));
    }

    #[test]
    fn a_new_registration_changes_the_secret() {
        let verifier = Verifier::new(Duration::from_secs(300));
        verifier.set_secret("old".into());
        verifier.set_secret("new".into());
        let old = signature::sign_at(b"old", b"{}", 1000);
        assert!(matches!(
            verifier.check(Some(&old), b"{}", at(1000)),
            Err(Refused::Signature(SignatureError::Mismatch))
        ));
        let new = signature::sign_at(b"new", b"{}", 1000);
        assert!(verifier.check(Some(&new), b"{}", at(1000)).is_ok());
    }
}
