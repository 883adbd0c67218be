//! The connection loop of the API and of the agent SDK's server, in place of `axum::serve`, which
//! has no header-read timeout and no connection cap (issue 15, "connections").
//!
//! - Every connection must send a request's headers within `header_read_timeout` — the first
//!   request's and, on a kept-alive connection, each next one's, so the same bound is the idle
//!   timeout. A client that opens connections and sends nothing (or a byte at a time) is cut
//!   off instead of holding a socket and a task forever.
//! - At most `max_connections` are served at once. Beyond that the loop stops accepting: new
//!   connections wait in the kernel's backlog until one closes — which the timeout above makes
//!   happen — instead of costing memory.
//! - Graceful shutdown as `axum::serve` does it: stop accepting, let each connection finish the
//!   request it serves, then close; `serve` returns once every connection has closed.
//!
//! Each request sees `ConnectInfo<SocketAddr>` as with `into_make_service_with_connect_info`.
//! Connections speak HTTP/1.1 only (TLS offers only `http/1.1` too): HTTP/2 would need bounds of
//! its own (streams, pings) that nothing here needs.

use axum::Router;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// Bounds on what clients may hold open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Longest wait for a request's headers, on a new connection and between the requests of a
    /// kept-alive one.
    pub header_read_timeout: Duration,
    /// TLS handshakes in flight at once; more connections wait in the kernel's backlog. Each
    /// handshake must finish within `header_read_timeout`.
    pub max_tls_handshakes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_tls_handshakes: 256,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `stop` is cancelled, then finishes the
/// requests in flight and returns once every connection has closed.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) where
    L: Listener<Addr = SocketAddr>,
{
    let mut make: IntoMakeServiceWithConnectInfo<Router, SocketAddr> =
        router.into_make_service_with_connect_info::<SocketAddr>();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (io, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok(service) = make.call(peer).await;
        let service = TowerToHyperService::new(service);
        let stop = stop.clone();
        let header_read_timeout = limits.header_read_timeout;
        connections.spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::trace!(%peer, error = %e, "Connection ended with an error");
                    }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
