//! The one error type of the client, which keeps the server's JSON error when there is one.

use flotilla_core::wire::{ErrorBody, ErrorDetail};

/// Longest body text kept in a synthesised error message or a decode error.
const SNIPPET_CHARS: usize = 512;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a non-2xx status; `error` is its JSON error body, or one
    /// synthesised with code `http_<status>` and the raw body text when the body was not JSON.
    #[error("HTTP {status}: {} ({})", error.message, error.code)]
    Api { status: u16, error: ErrorDetail },
    /// The request did not complete: connection refused or reset, timeout, protocol error.
    /// The message already includes the causes (so that one log line says what happened), which
    /// is why the inner error is not exposed as `source()` as well.
    #[error("transport error: {}", with_causes(.0))]
    Transport(reqwest::Error),
    /// The server answered 2xx with a body that is not the expected JSON (or the request body
    /// could not be encoded).
    #[error("cannot decode the answer: {0}")]
    Decode(String),
    /// The base URL is not an absolute http(s) URL.
    #[error("invalid base URL {0}")]
    InvalidUrl(String),
    /// The API key cannot be sent in an HTTP header (the message never contains the key).
    #[error("invalid API key: {0}")]
    InvalidKey(&'static str),
    /// The TLS settings are unusable: a CA, certificate or key file is missing or malformed (the
    /// message names the file, never a key's contents).
    #[error("TLS settings: {0}")]
    Tls(String),
}

impl ClientError {
    /// The HTTP status of an [`ClientError::Api`] error, or of a transport error that carries
    /// one; `None` when no answer was received.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Transport(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// The server's error code (`not_found`, `invalid_field`, …) of an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { error, .. } => Some(&error.code),
            _ => None,
        }
    }

    /// True when no answer came back at all (the server is down, unreachable or timed out).
    pub fn is_transport(&self) -> bool {
        matches!(self, ClientError::Transport(_))
    }

    pub(crate) fn from_response(
        status: u16,
        body: &[u8],
        request_id: Option<String>,
    ) -> ClientError {
        let error = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { mut error }) => {
                if error.request_id.is_none() {
                    error.request_id = request_id;
                }
                error
            }
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let message = if text.is_empty() {
                    reqwest::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("no body")
                        .to_owned()
                } else {
                    snippet(text)
                };
                ErrorDetail {
                    code: format!("http_{status}"),
                    message,
                    field: None,
                    request_id,
                }
            }
        };
        ClientError::Api { status, error }
    }
}

/// `error: cause: cause…`, since reqwest's own message ("error sending request") hides what went
/// wrong (connection refused, timed out).
fn with_causes(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    let mut hinted = false;
    let mut closed = false;
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        if let Some(hint) = tls_hint(cause) {
            text.push_str(hint);
            hinted = true;
        }
        closed |= cause
            .downcast_ref::<hyper::Error>()
            .is_some_and(|e| e.is_canceled() || e.is_incomplete_message());
        source = cause.source();
    }
    // Under TLS 1.3 a server that refuses the client's certificate (or its absence) does so
    // after the client has finished its handshake: the client may only see the connection
    // close before its request, with no TLS alert to name the cause.
    if closed && !hinted && error.url().is_some_and(|u| u.scheme() == "https") {
        text.push_str(
            " (the server closed the connection right after the TLS handshake: if it requires \
             a client certificate, give one with --client-cert and --client-key, or \
             FLOTILLA_CLIENT_CERT and FLOTILLA_CLIENT_KEY)",
        );
    }
    text
}

/// What to do about a failed TLS handshake, when a cause is one. rustls errors arrive wrapped
/// in `io::Error`s, whose `source()` skips what they wrap, so those are unwrapped here.
fn tls_hint(cause: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use rustls::{AlertDescription, Error};
    // The connector wraps the handshake's error in two `io::Error`s.
    let mut cause = cause;
    let tls = loop {
        if let Some(tls) = cause.downcast_ref::<Error>() {
            break tls;
        }
        cause = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())?;
    };
    match tls {
        Error::InvalidCertificate(_) => Some(
            " (the server's TLS certificate is not signed by a CA this client trusts: give the \
             CA's certificate with --ca-file or FLOTILLA_CA_FILE)",
        ),
        Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::HandshakeFailure,
        ) => Some(
            " (the server requires a client certificate signed by a CA it trusts: give one with \
             --client-cert and --client-key, or FLOTILLA_CLIENT_CERT and FLOTILLA_CLIENT_KEY)",
        ),
        _ => None,
    }
}

/// The start of `text`, cut at a character boundary.
pub(crate) fn snippet(text: &str) -> String {
    match text.char_indices().nth(SNIPPET_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_bodies_are_kept() {
        let body = br#"{"error":{"code":"not_found","message":"no task 1","field":"id"}}"#;
        let err = ClientError::from_response(404, body, Some("req-1".into()));
        assert_eq!(err.status(), Some(404));
        assert_eq!(err.code(), Some("not_found"));
        let ClientError::Api { error, .. } = err else {
            unreachable!()
        };
        assert_eq!(error.field.as_deref(), Some("id"));
        assert_eq!(error.request_id.as_deref(), Some("req-1"));
    }

    #[test]
    fn other_bodies_are_synthesised() {
        let err = ClientError::from_response(502, b"Bad Gateway from proxy", None);
        assert_eq!(err.code(), Some("http_502"));
        assert!(err.to_string().contains("Bad Gateway from proxy"));

        let empty = ClientError::from_response(503, b"", None);
        assert!(empty.to_string().contains("Service Unavailable"));
    }

    #[test]
    fn snippets_cut_on_character_boundaries() {
        let long = "é".repeat(SNIPPET_CHARS + 10);
        let cut = snippet(&long);
        assert_eq!(cut.chars().count(), SNIPPET_CHARS + 1);
    }
}
