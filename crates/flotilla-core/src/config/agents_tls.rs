//! `[agents_tls]`: TLS from the control plane to agents — the CA that signs agents' server
//! certificates (so `https` agent URLs are verified) and the control plane's client certificate
//! for agents that require one (mutual TLS). Only paths are checked here (the core does no I/O);
//! the server reads the files at start-up and fails with a message naming the file.

use super::{ConfigError, invalid};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[agents_tls]`. Without `ca_file` only `http` agent URLs can be reached.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsTlsSection {
    /// PEM file with the CA certificates that sign agents' server certificates; `https` agent
    /// URLs are verified against them (and only them).
    pub ca_file: Option<PathBuf>,
    /// PEM file with the control plane's client certificate chain (leaf first), presented to
    /// agents that require client certificates.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// Validated `[agents_tls]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentsTls {
    pub ca_file: PathBuf,
    /// The client certificate and its key, when agents require one.
    pub client: Option<ClientCertificate>,
}

/// A certificate chain and its private key, as PEM file paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

pub(super) fn validate(raw: &AgentsTlsSection) -> Result<Option<AgentsTls>, ConfigError> {
    let client = match (&raw.cert_file, &raw.key_file) {
        (Some(cert_file), Some(key_file)) => Some(ClientCertificate {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                "agents_tls.key_file",
                "`agents_tls.cert_file` is set but `agents_tls.key_file` is not; set both or neither"
                    .to_owned(),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "agents_tls.cert_file",
                "`agents_tls.key_file` is set but `agents_tls.cert_file` is not; set both or neither"
                    .to_owned(),
            ));
        }
    };
    match (&raw.ca_file, client) {
        (Some(ca_file), client) => Ok(Some(AgentsTls {
            ca_file: ca_file.clone(),
            client,
        })),
        (None, None) => Ok(None),
        // A client certificate is only ever sent over TLS, which needs a CA to verify agents.
        (None, Some(_)) => Err(invalid(
            "agents_tls.ca_file",
            "a client certificate for agents needs `agents_tls.ca_file`, the CA that signs their \
             server certificates"
                .to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_with_an_optional_client_certificate() {
        assert_eq!(validate(&AgentsTlsSection::default()).ok(), Some(None));
        let ca_only = AgentsTlsSection {
            ca_file: Some("ca.pem".into()),
            ..AgentsTlsSection::default()
        };
        assert!(matches!(
            validate(&ca_only),
            Ok(Some(AgentsTls { client: None, .. }))
        ));
        let full = AgentsTlsSection {
            cert_file: Some("c.pem".into()),
            key_file: Some("k.pem".into()),
            ..ca_only.clone()
        };
        assert!(matches!(
            validate(&full),
            Ok(Some(AgentsTls {
                client: Some(_),
                ..
            }))
        ));
        let half = AgentsTlsSection {
            key_file: None,
            ..full.clone()
        };
        assert!(validate(&half).is_err());
        let no_ca = AgentsTlsSection {
            ca_file: None,
            ..full
        };
        assert!(validate(&no_ca).is_err());
    }
}
