//! TLS on the instance's listener: `/execute` and `/health` over HTTPS from PEM files, and
//! optionally only for callers presenting a client certificate signed by a given CA (the
//! control plane's, for mutual TLS). rustls with the ring provider, chosen explicitly.
//!
//! Handshakes run in their own tasks under a timeout, so a silent client never holds up the
//! accept loop; finished connections reach `axum::serve` through a [`Listener`].

use super::AgentRuntimeError;
use axum::serve::Listener;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a caller may take to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to take them.
const READY_QUEUE: usize = 64;

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

fn error(file: &Path, message: impl std::fmt::Display) -> AgentRuntimeError {
    AgentRuntimeError::Tls(format!("{}: {message}", file.display()))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AgentRuntimeError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(path, e))?;
    if certs.is_empty() {
        return Err(error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The rustls server configuration of `tls`; every file is read here, so a bad one stops the
/// start with its name.
pub(crate) fn server_config(
    tls: &ServerTls,
) -> Result<Arc<rustls::ServerConfig>, AgentRuntimeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(&tls.cert_file, e))?;
    let builder = match &tls.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots.add(cert).map_err(|e| error(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| error(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| error(&tls.key_file, e))?;
    let mut config = builder
        .with_single_cert(load_certs(&tls.cert_file)?, key)
        .map_err(|e| error(&tls.key_file, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connections whose handshake has completed, for `axum::serve`.
pub(crate) struct TlsListener {
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

/// Accepts TCP connections on `tcp` and handshakes them on `tracker`, until `stop` is cancelled.
pub(crate) fn listen(
    tcp: TcpListener,
    config: Arc<rustls::ServerConfig>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> std::io::Result<TlsListener> {
    let local = tcp.local_addr()?;
    let (sender, ready) = mpsc::channel(READY_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = tracker.clone();
    tracker.spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = tcp.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "Could not accept a connection.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Answers go out at once (no Nagle delay on keep-alive connections, DESIGN.md §7).
            let _ = stream.set_nodelay(true);
            let (acceptor, sender, stop) = (acceptor.clone(), sender.clone(), stop.clone());
            handshakes.spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                let tls = tokio::select! {
                    () = stop.cancelled() => return,
                    done = handshake => done,
                };
                match tls {
                    Ok(Ok(tls)) => {
                        let _ = sender.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused."),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out."),
                }
            });
        }
    });
    Ok(TlsListener { ready, local })
}
