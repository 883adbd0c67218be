//! The connection bounds of `[server]`: what one client may hold open (issue 15, "connections").
//! The server's connection loop (`flotilla_tls::serve`) and the long-poll handler apply them.

use super::{ConfigError, ServerSection, invalid, positive_ms};
use std::time::Duration;

/// Validated connection bounds of `[server]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connections {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_tls_handshakes: usize,
    pub max_waits_per_key: u32,
}

pub(super) fn validate(raw: &ServerSection) -> Result<Connections, ConfigError> {
    let at_least_one = |key: &str, n: usize| {
        if n == 0 {
            Err(invalid(key, "must be at least 1"))
        } else {
            Ok(n)
        }
    };
    Ok(Connections {
        max_connections: at_least_one("server.max_connections", raw.max_connections)?,
        header_read_timeout: positive_ms(
            "server.header_read_timeout_ms",
            raw.header_read_timeout_ms,
        )?,
        max_tls_handshakes: at_least_one("server.max_tls_handshakes", raw.max_tls_handshakes)?,
        max_waits_per_key: u32::try_from(at_least_one(
            "server.max_waits_per_key",
            raw.max_waits_per_key as usize,
        )?)
        .unwrap_or(u32::MAX),
    })
}
