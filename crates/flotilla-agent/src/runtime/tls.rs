//! TLS on the instance's listener: `/execute` and `/health` over HTTPS from PEM files, and
//! optionally only for callers presenting a client certificate signed by a given CA (the
//! control plane's, for mutual TLS). The plumbing (ring provider, PEM files, a listener that
//! handshakes off the accept loop) is `flotilla-tls`, shared with the control plane.

use super::AgentRuntimeError;
pub(crate) use flotilla_tls::listen;
use std::path::PathBuf;
use std::sync::Arc;

/// TLS on the instance's listener (`flotilla agent --tls-cert/--tls-key/--client-ca`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM file with the instance's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file with its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM file with the CAs that sign the control plane's client certificate; when set, a
    /// caller without such a certificate is refused during the handshake.
    pub client_ca_file: Option<PathBuf>,
}

/// The rustls server configuration of `tls`; every file is read here, so a bad one stops the
/// start with its name.
pub(crate) fn server_config(
    tls: &ServerTls,
) -> Result<Arc<rustls::ServerConfig>, AgentRuntimeError> {
    flotilla_tls::server_config(&tls.cert_file, &tls.key_file, tls.client_ca_file.as_deref())
        .map_err(|e| AgentRuntimeError::Tls(format!("{}: {}", e.file, e.message)))
}
