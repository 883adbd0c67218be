#![allow(clippy::unwrap_used)]

use super::*;
use chrono::TimeZone;
use proptest::prelude::*;

fn key() -> TokenKey {
    TokenKey::new([7; 32])
}

fn at(ms: i64) -> Timestamp {
    chrono::Utc.timestamp_millis_opt(ms).single().unwrap()
}

fn claims() -> TaskClaims {
    TaskClaims {
        task_id: TaskId::from_uuid(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0042)),
        attempt: 3,
        tenant_id: TenantId::from_uuid(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0007)),
        expires_at: at(1_750_000_060_000),
    }
}

#[test]
fn a_token_round_trips_until_its_deadline() {
    let token = issue(&key(), &claims());
    assert!(token.starts_with("ftk_"));
    assert!(token.len() < 120, "{} chars", token.len());
    assert_eq!(verify(&key(), &token, at(1_750_000_000_000)), Ok(claims()));
    assert_eq!(
        verify(&key(), &token, at(1_750_000_059_999)).map(|c| c.attempt),
        Ok(3)
    );
    assert_eq!(
        verify(&key(), &token, at(1_750_000_060_000)),
        Err(TokenError::Expired)
    );
}

#[test]
fn tokens_are_never_api_keys() {
    let token = issue(&key(), &claims());
    assert!(crate::auth::parse_key(&token).is_none());
    assert!(looks_like_token(&token));
    assert!(!looks_like_token("flt_abc_def"));
}

#[test]
fn another_key_or_garbage_is_refused() {
    let token = issue(&key(), &claims());
    let now = at(1_750_000_000_000);
    assert_eq!(
        verify(&TokenKey::new([8; 32]), &token, now),
        Err(TokenError::Invalid)
    );
    for text in [
        "",
        "ftk_",
        "ftk_abc",
        "ftk_abc.def",
        "flt_abc_def",
        "ftk_!!!.???",
        &format!("ftk_{}", "A".repeat(300)),
    ] {
        assert_eq!(
            verify(&key(), text, now),
            Err(TokenError::Malformed),
            "{text}"
        );
    }
    // A correctly signed payload of another version is refused.
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[0] = 2;
    let forged = format!(
        "ftk_{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(key().mac(&payload))
    );
    assert_eq!(verify(&key(), &forged, now), Err(TokenError::Malformed));
}

#[test]
fn debug_never_shows_the_key() {
    assert_eq!(format!("{:?}", key()), "TokenKey(<redacted>)");
}

proptest! {
    /// Changing any character of a token makes it invalid or malformed, never valid with other
    /// claims.
    #[test]
    fn tampering_any_character_fails(i in 4usize..200, c in proptest::char::range('-', 'z')) {
        let token = issue(&key(), &claims());
        let i = i % token.len();
        prop_assume!(i >= PREFIX.len() && token.as_bytes()[i] != c as u8);
        let mut bytes = token.into_bytes();
        bytes[i] = c as u8;
        let tampered = String::from_utf8(bytes).unwrap();
        prop_assert!(verify(&key(), &tampered, at(1_750_000_000_000)).is_err());
    }

    /// Changing any claim changes the token.
    #[test]
    fn every_claim_is_signed(attempt in 1i32..100, expiry in 0i64..1_000_000) {
        let mut other = claims();
        other.attempt = attempt;
        other.expires_at = at(1_750_000_000_000 + expiry);
        let token = issue(&key(), &other);
        prop_assert_eq!(verify(&key(), &token, at(1_749_999_999_999)), Ok(other.clone()));
        prop_assert_eq!(token == issue(&key(), &claims()), other == claims());
    }
}
