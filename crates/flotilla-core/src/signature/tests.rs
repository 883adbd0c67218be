#![allow(clippy::unwrap_used)]

use super::*;
use chrono::TimeZone;
use proptest::prelude::*;

const SECRET: &[u8] = b"9f2c1e0d4b7a6c5e8d3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d";
const BODY: &[u8] = br#"{"task_id":"0190","attempt":1,"input":{}}"#;
const T: i64 = 1_750_000_000;
const SKEW: Duration = DEFAULT_MAX_SKEW;

fn at(t: i64) -> Timestamp {
    chrono::Utc.timestamp_opt(t, 0).single().unwrap_or_default()
}

#[test]
fn a_signature_verifies_at_its_own_time() {
    let header = sign(SECRET, BODY, at(T));
    assert!(header.starts_with(&format!("t={T},v1=")));
    let verified = verify(Some(&header), SECRET, BODY, at(T), SKEW).unwrap();
    assert_eq!(verified.t, T);
}

#[test]
fn known_answer() {
    // `printf '1.{}' | openssl dgst -sha256 -hmac secret`
    assert_eq!(
        sign_at(b"secret", b"{}", 1),
        "t=1,v1=1122767b193110cfec322b6f199b599edbf608ed087f2d27afb0b97d99523908"
    );
}

#[test]
fn errors_name_the_reason() {
    let good = sign_at(SECRET, BODY, T);
    let now = at(T);
    let table: Vec<(Option<&str>, &[u8], Timestamp, SignatureError)> = vec![
        (None, BODY, now, SignatureError::Missing),
        (
            Some(""),
            BODY,
            now,
            SignatureError::Malformed("expected comma-separated key=value pairs"),
        ),
        (
            Some("t=1"),
            BODY,
            now,
            SignatureError::Malformed("`v1=` is missing"),
        ),
        (
            Some("v1=00"),
            BODY,
            now,
            SignatureError::Malformed("`v1` must be 64 hex digits"),
        ),
        (
            Some("t=-5,v1=00"),
            BODY,
            now,
            SignatureError::Malformed("`t` must be Unix seconds"),
        ),
        (
            Some("t=1,t=2,v1=00"),
            BODY,
            now,
            SignatureError::Malformed("`t` appears twice"),
        ),
        (Some(&good), b"{}", now, SignatureError::Mismatch),
        (
            Some(&good),
            BODY,
            at(T + 301),
            SignatureError::Stale {
                age_s: 301,
                max_skew_s: 300,
            },
        ),
        (
            Some(&good),
            BODY,
            at(T - 301),
            SignatureError::Future {
                ahead_s: 301,
                max_skew_s: 300,
            },
        ),
    ];
    for (header, body, now, expected) in table {
        assert_eq!(
            verify(header, SECRET, body, now, SKEW),
            Err(expected.clone()),
            "{header:?}"
        );
        assert!(expected.code().starts_with("signature_"));
    }
    // At exactly the skew the signature is still good.
    assert!(verify(Some(&good), SECRET, BODY, at(T + 300), SKEW).is_ok());
    assert!(verify(Some(&good), SECRET, BODY, at(T - 300), SKEW).is_ok());
}

#[test]
fn a_wrong_secret_or_a_missing_t_fails() {
    let header = sign_at(SECRET, BODY, T);
    assert_eq!(
        verify(Some(&header), b"another secret", BODY, at(T), SKEW),
        Err(SignatureError::Mismatch)
    );
    let mac = header.split_once(",").map(|(_, v)| v).unwrap_or_default();
    assert_eq!(
        verify(Some(mac), SECRET, BODY, at(T), SKEW),
        Err(SignatureError::Malformed("`t=` is missing"))
    );
}

#[test]
fn unknown_schemes_and_extra_macs_are_tolerated() {
    let good = sign_at(SECRET, BODY, T);
    let other = sign_at(b"old secret", BODY, T);
    let other_mac = other.split_once(",v1=").map(|(_, m)| m).unwrap_or_default();
    let header = format!("{good},v1={other_mac},v2=whatever");
    assert!(verify(Some(&header), SECRET, BODY, at(T), SKEW).is_ok());
    let header = format!("t={T},v1={other_mac}");
    assert_eq!(
        verify(Some(&header), SECRET, BODY, at(T), SKEW),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn huge_headers_are_refused_before_parsing() {
    let header = format!("t=1,{}", "v2=x,".repeat(400));
    assert_eq!(
        verify(Some(&header), SECRET, BODY, at(T), SKEW),
        Err(SignatureError::Malformed("longer than 1024 bytes"))
    );
}

proptest! {
    /// Changing any byte of the body invalidates the signature.
    #[test]
    fn tampering_any_body_byte_fails(i in 0..BODY.len(), flip in 1u8..=255) {
        let header = sign_at(SECRET, BODY, T);
        let mut body = BODY.to_vec();
        body[i] ^= flip;
        prop_assert_eq!(verify(Some(&header), SECRET, &body, at(T), SKEW), Err(SignatureError::Mismatch));
    }

    /// Changing any hex digit of the MAC invalidates it (or makes the header malformed).
    #[test]
    fn tampering_any_header_byte_fails(i in 0usize..80, replacement in proptest::char::range('0', 'z')) {
        let header = sign_at(SECRET, BODY, T);
        let i = i % header.len();
        let mut bytes = header.clone().into_bytes();
        prop_assume!(!bytes[i].eq_ignore_ascii_case(&(replacement as u8)));
        bytes[i] = replacement as u8;
        let tampered = String::from_utf8(bytes).unwrap();
        prop_assert!(verify(Some(&tampered), SECRET, BODY, at(T), SKEW).is_err());
    }

    /// Moving `t` while keeping the MAC fails: the timestamp is signed.
    #[test]
    fn shifting_t_fails(shift in -1000i64..1000) {
        prop_assume!(shift != 0);
        let header = sign_at(SECRET, BODY, T);
        let shifted = header.replacen(&format!("t={T}"), &format!("t={}", T + shift), 1);
        prop_assert_eq!(verify(Some(&shifted), SECRET, BODY, at(T), SKEW), Err(SignatureError::Mismatch));
    }

    /// A signature is accepted exactly within the skew window.
    #[test]
    fn the_window_is_symmetric(offset in -1000i64..1000) {
        let header = sign_at(SECRET, BODY, T);
        let result = verify(Some(&header), SECRET, BODY, at(T + offset), SKEW);
        prop_assert_eq!(result.is_ok(), offset.abs() <= 300);
    }
}
