//! The shape of an agent's URL (`POST /v1/agents`): `http(s)://host[:port][/path]`, and how the
//! contract's endpoints (`/execute`, `/health`) are joined to it.
//!
//! Everything a URL may carry besides a scheme, a host, a port and a path is refused: user-info
//! (credentials would be sent to whoever the host is), a query or a fragment (even an empty `?`
//! or `#`: joining an endpoint to such a URL would not call what it seems to), control or
//! whitespace characters (which the URL parser silently drops) and anything past
//! [`MAX_AGENT_URL_BYTES`]. The host is a name of letters, digits, dots and dashes, or an IP
//! address. Whether its addresses may be called is the egress policy's question
//! ([`crate::egress`]), asked again at every send.

use url::{Host, Url};

/// Longest agent URL accepted, in bytes.
pub const MAX_AGENT_URL_BYTES: usize = 2048;

/// Why a text is not an agent URL. Each names the rule it breaks; the message is safe to show
/// the caller that sent the text (it quotes none of it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    /// Longer than [`MAX_AGENT_URL_BYTES`].
    #[error("`url` must be at most {MAX_AGENT_URL_BYTES} bytes long")]
    TooLong,
    /// A control or whitespace character, which the URL parser would silently drop.
    #[error("`url` must not contain control or whitespace characters")]
    Control,
    /// Not a URL at all.
    #[error("`url` must be an http(s) URL: {0}")]
    Unparsable(String),
    /// A scheme other than `http` or `https`.
    #[error("`url` must use the http or https scheme")]
    Scheme,
    /// `user[:password]@` before the host.
    #[error("`url` must not contain user-info (`user:password@`)")]
    UserInfo,
    /// A `?`, even with nothing after it.
    #[error("`url` must not have a query (`?`)")]
    Query,
    /// A `#`, even with nothing after it.
    #[error("`url` must not have a fragment (`#`)")]
    Fragment,
    /// A host that is not a plain name or an IP address.
    #[error("`url` must name a host of letters, digits, dots and dashes, or an IP address")]
    Host,
}

/// Parses and checks an agent URL (see the module header).
pub fn parse(text: &str) -> Result<Url, UrlRefusal> {
    if text.len() > MAX_AGENT_URL_BYTES {
        return Err(UrlRefusal::TooLong);
    }
    if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(UrlRefusal::Control);
    }
    // The parser drops an empty query or fragment from what it reports in some forms; the text
    // itself says whether one was written.
    if text.contains('#') {
        return Err(UrlRefusal::Fragment);
    }
    if text.contains('?') {
        return Err(UrlRefusal::Query);
    }
    let url = Url::parse(text).map_err(|e| UrlRefusal::Unparsable(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRefusal::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefusal::UserInfo);
    }
    if url.query().is_some() {
        return Err(UrlRefusal::Query);
    }
    if url.fragment().is_some() {
        return Err(UrlRefusal::Fragment);
    }
    let host_ok = match url.host() {
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => true,
        Some(Host::Domain(name)) => {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
        None => false,
    };
    if !host_ok {
        return Err(UrlRefusal::Host);
    }
    Ok(url)
}

/// The URL of one of the contract's endpoints (`execute`, `health`) under an agent's base URL,
/// joined as a path segment: `http://h:1/a/` and `http://h:1/a` both give `http://h:1/a/execute`.
/// `None` for a URL that cannot have path segments (never an `http(s)` URL).
pub fn endpoint(base: &Url, segment: &str) -> Option<Url> {
    let mut url = base.clone();
    url.path_segments_mut().ok()?.pop_if_empty().push(segment);
    Some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_and_https_urls_with_a_path_are_agent_urls() {
        for ok in [
            "http://127.0.0.1:9",
            "https://agent-1.pool.svc:8443/v1",
            "http://[::1]:8080/",
            "http://localhost/agents/a/",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn each_rule_is_named() {
        let long = format!("http://127.0.0.1:9/{}", "a".repeat(MAX_AGENT_URL_BYTES));
        for (text, refusal) in [
            ("ftp://127.0.0.1:9", UrlRefusal::Scheme),
            ("http://user:pw@127.0.0.1:9", UrlRefusal::UserInfo),
            ("http://user@127.0.0.1:9", UrlRefusal::UserInfo),
            ("http://127.0.0.1:9/x?", UrlRefusal::Query),
            ("http://127.0.0.1:9/x?a=1", UrlRefusal::Query),
            ("http://127.0.0.1:9/x#", UrlRefusal::Fragment),
            ("http://127.0.0.1:9/x#top", UrlRefusal::Fragment),
            ("http://127.0.0.1:9/x\n", UrlRefusal::Control),
            ("http://127.0.0.1:9/a b", UrlRefusal::Control),
            ("http://a_b:9", UrlRefusal::Host),
            (long.as_str(), UrlRefusal::TooLong),
        ] {
            assert_eq!(parse(text), Err(refusal), "{text}");
        }
        assert!(matches!(parse("not-a-url"), Err(UrlRefusal::Unparsable(_))));
    }

    #[test]
    fn endpoints_are_path_segments() {
        for (base, want) in [
            ("http://h:1", "http://h:1/execute"),
            ("http://h:1/", "http://h:1/execute"),
            ("http://h:1/a", "http://h:1/a/execute"),
            ("http://h:1/a/", "http://h:1/a/execute"),
        ] {
            let base = parse(base).map_err(|e| e.to_string());
            let joined = base.map(|b| endpoint(&b, "execute").map(String::from));
            assert_eq!(joined, Ok(Some(want.to_owned())));
        }
    }
}
