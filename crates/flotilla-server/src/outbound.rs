//! HTTP clients towards configured destinations — model providers, the HashiCorp Vault, alert
//! webhooks — start from [`client_builder`]: they follow no redirect, since a redirect would
//! carry the request (and its credentials: a provider key, a Vault token, a signed body) to a
//! place nobody configured. A 3xx answer is then an answer like any other non-success.
//! (The clients for agents have their own, stricter builder in `agent_clients`.)

/// A client builder that follows no redirect.
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none())
}

/// An error and its causes, `: `-separated (reqwest's own text stops at "error sending
/// request"; the cause says what went wrong).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
