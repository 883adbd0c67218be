//! The HTTP clients for agents (dispatch and health checks), which enforce `[agents_egress]` at
//! send time, and bounded reads of what agents answer.
//!
//! A host name is resolved by [`EgressResolver`] when a connection is made; addresses the policy
//! refuses are dropped, and when none remains the request fails naming the rule, so a name that
//! resolves elsewhere than at registration (DNS rebinding) reaches nothing the policy forbids.
//! reqwest does not resolve IP-literal hosts, so [`AgentClients::check_host`] checks those
//! before a request is sent. The policy depends on the instance's owner and a client has one
//! resolver, so there is one client per distinct requester: the platform, tenants without an
//! override, and each tenant with one.
//!
//! No client follows redirects (a redirect could point anywhere, past the policy and the
//! signature's audience), and none trusts a CA other than `[agents_tls]`'s.

use crate::tls::{self, TlsError};
use flotilla_core::agent_url::{self, UrlRefusal};
use flotilla_core::config::AgentsTls;
use flotilla_core::egress::{self, EgressPolicy, Refusal, Requester};
use flotilla_core::id::TenantId;
use flotilla_core::retry::{ConnectReason, DispatchFailure};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use url::Host;

/// One HTTP client per distinct egress requester.
pub struct AgentClients {
    policy: Arc<EgressPolicy>,
    platform: reqwest::Client,
    tenants: reqwest::Client,
    overrides: HashMap<TenantId, reqwest::Client>,
}

/// Why the HTTP clients for agents could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// A file of `[agents_tls]` is missing or unusable.
    #[error("agents_tls: {0}")]
    Tls(#[from] TlsError),
    /// reqwest refused the settings.
    #[error("cannot build the HTTP client for agents: {0}")]
    Build(#[source] reqwest::Error),
}

/// The error a refused resolution or host fails with; found again in the request's error chain
/// by [`refusal_in`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EgressRefused(pub Refusal);

/// Why an agent URL cannot be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationRefusal {
    /// The URL breaks a rule of its shape.
    #[error(transparent)]
    Shape(#[from] UrlRefusal),
    /// The host is, or resolves to, an address the egress policy refuses.
    #[error("`url`: {0}")]
    Egress(#[from] Refusal),
}

/// How long registration waits for the host name to resolve.
const REGISTRATION_LOOKUP: Duration = Duration::from_secs(2);

/// Whose requests a resolver serves (a [`Requester`] without the borrow).
#[derive(Clone, Copy, Debug)]
enum Owner {
    Platform,
    /// A tenant without allow entries of its own.
    AnyTenant,
    Tenant(TenantId),
}

impl AgentClients {
    /// Reads `[agents_tls]`'s files and builds the clients.
    pub fn new(
        agents_tls: Option<&AgentsTls>,
        policy: EgressPolicy,
    ) -> Result<AgentClients, AgentClientError> {
        let policy = Arc::new(policy);
        let tls = match agents_tls {
            Some(agents_tls) => client_config(agents_tls)?,
            None => no_roots(),
        };
        let client = |owner| http_client(tls.clone(), resolver(&policy, owner));
        let mut overrides = HashMap::new();
        for tenant in policy.tenants.keys() {
            overrides.insert(*tenant, client(Owner::Tenant(*tenant))?);
        }
        Ok(AgentClients {
            platform: client(Owner::Platform)?,
            tenants: client(Owner::AnyTenant)?,
            overrides,
            policy,
        })
    }

    /// The client for instances of `owner` (`None`: the platform's).
    pub fn for_owner(&self, owner: Option<TenantId>) -> &reqwest::Client {
        match owner {
            None => &self.platform,
            Some(tenant) => self.overrides.get(&tenant).unwrap_or(&self.tenants),
        }
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Checks an IP-literal host, which no resolver sees; host names pass (their addresses are
    /// checked when they are resolved).
    pub fn check_host(&self, owner: Option<TenantId>, url: &url::Url) -> Result<(), Refusal> {
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => ip.into(),
            Some(Host::Ipv6(ip)) => ip.into(),
            Some(Host::Domain(_)) | None => return Ok(()),
        };
        egress::check(&self.policy, owner, ip)
    }
}

impl AgentClients {
    /// Checks an agent URL at registration: its shape, then every address its host is or
    /// resolves to now. A name that does not resolve (yet) is accepted: the check at every send
    /// is the one that holds; this one tells a misconfigured agent at once.
    pub async fn registrable(
        &self,
        owner: Option<TenantId>,
        text: &str,
    ) -> Result<url::Url, RegistrationRefusal> {
        let url = agent_url::parse(text)?;
        self.check_host(owner, &url)?;
        if let Some(Host::Domain(name)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(80);
            let lookup = tokio::net::lookup_host((name, port));
            match tokio::time::timeout(REGISTRATION_LOOKUP, lookup).await {
                Ok(Ok(addrs)) => {
                    for addr in addrs {
                        egress::check(&self.policy, owner, addr.ip())?;
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(host = name, error = %e, "Agent host does not resolve")
                }
                Err(_) => tracing::debug!(host = name, "Agent host did not resolve in time"),
            }
        }
        Ok(url)
    }
}

fn resolver(policy: &Arc<EgressPolicy>, owner: Owner) -> Arc<EgressResolver> {
    Arc::new(EgressResolver {
        policy: Arc::clone(policy),
        owner,
    })
}

/// Resolves with the system resolver (through tokio) and keeps only addresses the policy allows.
pub struct EgressResolver {
    policy: Arc<EgressPolicy>,
    owner: Owner,
}

impl EgressResolver {
    /// A resolver for instances of `owner` (used alone in tests).
    pub fn new(policy: Arc<EgressPolicy>, owner: Option<TenantId>) -> EgressResolver {
        let owner = match owner {
            None => Owner::Platform,
            Some(tenant) if policy.tenants.contains_key(&tenant) => Owner::Tenant(tenant),
            Some(_) => Owner::AnyTenant,
        };
        EgressResolver { policy, owner }
    }

    fn requester(&self) -> Requester<'_> {
        match self.owner {
            Owner::Platform => Requester::Platform,
            Owner::AnyTenant => Requester::Tenant { allow: &[] },
            Owner::Tenant(tenant) => self.policy.requester(Some(tenant)),
        }
    }
}

impl Resolve for EgressResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let owner = self.owner;
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let this = EgressResolver { policy, owner };
            let kept =
                egress::allowed(&this.policy, this.requester(), resolved).map_err(EgressRefused)?;
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// The egress refusal somewhere in an error's cause chain, if any.
pub fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<EgressRefused>() {
            return Some(refused.0.clone());
        }
        cause = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    None
}

/// A client with pooled keep-alive connections and `TCP_NODELAY` (docs/design.md §7), the given TLS
/// configuration, the egress resolver, no proxy and no redirects.
fn http_client(
    tls: rustls::ClientConfig,
    resolver: Arc<EgressResolver>,
) -> Result<reqwest::Client, AgentClientError> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .connect_timeout(Duration::from_secs(5))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(resolver)
        .use_preconfigured_tls(tls)
        .build()
        .map_err(AgentClientError::Build)
}

/// Without `[agents_tls]`: TLS that trusts no CA at all, so `https` agents cannot be reached
/// (the attempt fails with a TLS error) and only plain `http` agents can. Built explicitly
/// because reqwest, as the workspace configures it, would otherwise trust the public web PKI.
fn no_roots() -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// The rustls configuration of `[agents_tls]`, with the ring provider chosen explicitly:
/// `https` agent URLs are verified against its CA only, and the control plane presents its
/// client certificate when one is configured.
fn client_config(agents_tls: &AgentsTls) -> Result<rustls::ClientConfig, TlsError> {
    let roots = tls::load_roots(&agents_tls.ca_file)?;
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            file: agents_tls.ca_file.display().to_string(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots);
    let mut config = match &agents_tls.client {
        Some(client) => builder
            .with_client_auth_cert(
                tls::load_certs(&client.cert_file)?,
                tls::load_key(&client.key_file)?,
            )
            .map_err(|e| TlsError {
                file: client.key_file.display().to_string(),
                message: e.to_string(),
            })?,
        None => builder.with_no_client_auth(),
    };
    // The agent SDK serves HTTP/1.1; saying so keeps every agent on one protocol.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An answer longer than its limit.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the answer is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
}

/// Reads a body of at most `limit` bytes, whether or not it declares its length: a declared
/// length over the limit is refused before reading, and reading stops as soon as the chunks
/// received pass it (so at most `limit` bytes plus one chunk are ever held).
pub async fn read_capped(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge { limit });
    }
    // Chunks are kept as received and joined once at the end, so a long answer is never copied
    // into ever larger buffers on its way to the limit.
    let mut chunks = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = response.chunk().await? {
        total = total.saturating_add(chunk.len());
        if total > limit {
            return Err(ReadError::TooLarge { limit });
        }
        chunks.push(chunk);
    }
    let mut body = Vec::with_capacity(total);
    for chunk in chunks {
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The first `n` bytes of a body (or fewer), for quoting an error answer; the rest is not read.
pub async fn read_prefix(response: &mut reqwest::Response, n: usize) -> Vec<u8> {
    let mut prefix = Vec::new();
    while prefix.len() < n {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                prefix.extend_from_slice(&chunk[..chunk.len().min(n - prefix.len())])
            }
            Ok(None) | Err(_) => break,
        }
    }
    prefix
}

/// A transport error as a failure: the egress refusal it carries, or a reason safe to show
/// anyone and the whole cause chain (which names the URL) for the instance's own tenant and logs.
pub fn transport_failure(e: reqwest::Error) -> DispatchFailure {
    if e.is_timeout() {
        return DispatchFailure::Timeout;
    }
    if let Some(refusal) = refusal_in(&e) {
        return DispatchFailure::Refused(refusal);
    }
    // reqwest's own message is generic; the cause chain says what happened.
    let mut detail = e.to_string();
    let mut reason = ConnectReason::Other;
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        if is_tls(cause) {
            reason = ConnectReason::Tls;
        } else if reason == ConnectReason::Other {
            reason = io_reason(cause).unwrap_or(reason);
        }
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    if reason == ConnectReason::Other && detail.contains("dns error") {
        reason = ConnectReason::Dns;
    }
    if reason == ConnectReason::Tls {
        // Say so plainly: a certificate problem is fixed in configuration, not by waiting.
        detail.insert_str(0, "TLS: ");
    }
    DispatchFailure::Connect { reason, detail }
}

/// The reason an I/O error in the chain gives, if it is one.
fn io_reason(cause: &(dyn std::error::Error + 'static)) -> Option<ConnectReason> {
    use std::io::ErrorKind;
    let io = cause.downcast_ref::<std::io::Error>()?;
    match io.kind() {
        ErrorKind::ConnectionRefused => Some(ConnectReason::Refused),
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof => Some(ConnectReason::Closed),
        _ => None,
    }
}

/// True for a rustls error, also when wrapped in `io::Error`s (whose `source()` skips what they
/// wrap; the connector wraps the handshake's error twice).
fn is_tls(cause: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = cause;
    loop {
        if cause.is::<rustls::Error>() {
            return true;
        }
        match cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => cause = inner,
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests;
