//! TLS on the API listener (`[tls]`, docs/design.md §10); the plumbing is `flotilla-tls`, shared
//! with the agent SDK.

use flotilla_core::config::Tls;
pub(crate) use flotilla_tls::{TlsError, listen, load_certs, load_key, load_roots, provider};
use std::sync::Arc;

/// The server configuration of `[tls]`: its certificate, and the client CA when set.
pub(crate) fn server_config(tls: &Tls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    flotilla_tls::server_config(&tls.cert_file, &tls.key_file, tls.client_ca_file.as_deref())
}
