//! Listener plumbing shared by the control plane's API and the agent SDK's server: the connection
//! loop with its timeouts and caps ([`serve`]), and TLS: rustls with the ring provider, chosen
//! explicitly (kube links ring too, so there is one provider in the binary), certificates and
//! keys from PEM files, optional client certificates (mutual TLS), and a [`Listener`] of
//! handshaken connections.
//!
//! Handshakes run in their own tasks, bounded by a timeout and in number, so a slow or silent
//! client never holds up the accept loop; finished connections reach [`serve`] through the
//! listener, which keeps `TCP_NODELAY`, graceful shutdown and `ConnectInfo<SocketAddr>` exactly as
//! on plain HTTP.

mod serve;

pub use serve::{ConnectionLimits, serve};

use axum::serve::Listener;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Finished handshakes waiting for the server to take them.
const READY_QUEUE: usize = 256;

/// Why the TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {file}: {message}")]
pub struct TlsError {
    /// The file at fault, or the setting.
    pub file: String,
    pub message: String,
}

fn error(file: &Path, message: impl ToString) -> TlsError {
    TlsError {
        file: file.display().to_string(),
        message: message.to_string(),
    }
}

/// The rustls provider every TLS user in Flotilla uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(path, e))?;
    if certs.is_empty() {
        return Err(error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| error(path, e))
}

/// A root store of the CA certificates in a PEM file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| error(path, e))?;
    }
    Ok(roots)
}

/// A server configuration: the certificate chain and key from PEM files, and, with
/// `client_ca_file`, client certificates signed by those CAs required during the handshake.
/// Every file is read here, so a bad one is reported with its name at start-up.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(cert_file, e))?;
    let builder = match client_ca_file {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider)
                    .build()
                    .map_err(|e| error(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(cert_file)?, load_key(key_file)?)
        .map_err(|e| error(key_file, e))?;
    // axum's server speaks HTTP/1.1 here.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connections whose handshake has completed, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop stopped (shutdown): no connection will come again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Starts accepting TCP connections on `tcp` and handshaking them, at most
/// `limits.max_tls_handshakes` at once (more connections wait in the kernel's backlog), each
/// within `limits.header_read_timeout`; the loop and its handshakes run on `tracker` and stop
/// when `stop` is cancelled.
pub fn listen(
    tcp: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: &ConnectionLimits,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> std::io::Result<TlsListener> {
    let local = tcp.local_addr()?;
    let (sender, ready) = mpsc::channel(READY_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = tracker.clone();
    let permits = Arc::new(Semaphore::new(limits.max_tls_handshakes.max(1)));
    let handshake_timeout = limits.header_read_timeout;
    tracker.spawn(async move {
        loop {
            let permit = tokio::select! {
                () = stop.cancelled() => return,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = tcp.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "Could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Answers go out at once (no Nagle delay on keep-alive connections, docs/design.md §7).
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "Could not set TCP_NODELAY");
            }
            let (acceptor, sender, stop) = (acceptor.clone(), sender.clone(), stop.clone());
            handshakes.spawn(async move {
                let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                let tls = tokio::select! {
                    () = stop.cancelled() => return,
                    done = handshake => done,
                };
                drop(permit);
                match tls {
                    Ok(Ok(tls)) => {
                        let _ = sender.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(TlsListener { ready, local })
}
