//! HTTP clients towards configured destinations — model providers, the HashiCorp Vault, alert
//! webhooks — start from [`client_builder`]: they follow no redirect, since a redirect would
//! carry the request (and its credentials: a provider key, a Vault token, a signed body) to a
//! place nobody configured. A 3xx answer is then an answer like any other non-success.
//! (The clients for agents have their own, stricter builder in `agent_clients`.)

/// A client builder that follows no redirect.
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none())
}
