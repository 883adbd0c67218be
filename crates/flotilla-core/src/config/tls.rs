//! `[tls]`: TLS on the API listener, from PEM files, optionally requiring client certificates
//! (mutual TLS). Only paths are checked here (the core does no I/O); the server reads and parses
//! the files at start-up and fails with a message naming the file.

use super::{ConfigError, invalid};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[tls]`. Without `cert_file` and `key_file` the API listener speaks plain HTTP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM file with the server's certificate chain (leaf first).
    pub cert_file: Option<PathBuf>,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// PEM file with the CA certificates that sign client certificates; when set, every caller
    /// must present a certificate signed by one of them (mutual TLS), besides its API key.
    pub client_ca_file: Option<PathBuf>,
}

/// Validated `[tls]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

pub(super) fn validate(raw: &TlsSection) -> Result<Option<Tls>, ConfigError> {
    match (&raw.cert_file, &raw.key_file) {
        (Some(cert_file), Some(key_file)) => Ok(Some(Tls {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: raw.client_ca_file.clone(),
        })),
        (None, None) if raw.client_ca_file.is_some() => Err(invalid(
            "tls.client_ca_file",
            "client certificates need TLS: set `tls.cert_file` and `tls.key_file` too".to_owned(),
        )),
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(
            "tls.key_file",
            "`tls.cert_file` is set but `tls.key_file` is not; set both or neither".to_owned(),
        )),
        (None, Some(_)) => Err(invalid(
            "tls.cert_file",
            "`tls.key_file` is set but `tls.cert_file` is not; set both or neither".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_files_or_neither() {
        assert_eq!(validate(&TlsSection::default()).ok(), Some(None));
        let both = TlsSection {
            cert_file: Some("c.pem".into()),
            key_file: Some("k.pem".into()),
            client_ca_file: None,
        };
        assert!(matches!(validate(&both), Ok(Some(_))));
        let half = TlsSection {
            key_file: None,
            ..both.clone()
        };
        assert!(validate(&half).is_err());
        let ca_only = TlsSection {
            client_ca_file: Some("ca.pem".into()),
            ..TlsSection::default()
        };
        assert!(validate(&ca_only).is_err());
    }
}
