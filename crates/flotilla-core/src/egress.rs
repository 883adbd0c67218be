//! The egress policy towards agents (`[agents_egress]`): which addresses the control plane may
//! call for an agent instance, decided per resolved IP address and per owner of the instance.
//!
//! The shell asks [`check`] for every address a host name resolves to when it connects (and for
//! IP-literal hosts before it sends), so a name that resolves to something else at send time
//! than at registration (DNS rebinding) gets no further than the policy allows.
//!
//! The decision, in order:
//! 1. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are judged as their IPv4 address.
//! 2. A `deny` entry refuses, for everyone.
//! 3. Built-in refusals: cloud metadata addresses, link-local, unspecified, multicast and
//!    broadcast addresses, and loopback for tenants' instances (platform instances — owner
//!    `None` — may use loopback). An `allow` entry (global, or the owning tenant's) lifts one
//!    only when the entry lies inside the refused range: `169.254.169.254/32` lifts the metadata
//!    refusal of that address, `0.0.0.0/0` lifts none. `allow_loopback_for_tenants` lifts the
//!    loopback refusal for every tenant.
//! 4. Everything else is allowed.

use crate::id::TenantId;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The validated `[agents_egress]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Ranges allowed for every instance (see the module header for what they lift).
    pub allow: Vec<IpNet>,
    /// Ranges refused for every instance, whatever else says.
    pub deny: Vec<IpNet>,
    /// Tenants' instances may use loopback addresses.
    pub allow_loopback_for_tenants: bool,
    /// Ranges allowed for one tenant's instances, besides `allow`.
    pub tenants: BTreeMap<TenantId, Vec<IpNet>>,
}

/// Whose instance is called, as the policy sees it: the platform, or a tenant with the allow
/// entries of its own (empty for a tenant without an override). The shell keeps one HTTP client
/// per distinct requester.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requester<'a> {
    /// An instance of the platform (owner `None`).
    Platform,
    /// A tenant's instance, with the tenant's own allow entries.
    Tenant { allow: &'a [IpNet] },
}

/// Why an address may not be called: the address and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{ip} is {} (agents_egress)", rule.describe())]
pub struct Refusal {
    pub ip: IpAddr,
    pub rule: Rule,
}

/// The rule that refused an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// In an entry of `deny`.
    Denied(IpNet),
    /// A cloud provider's metadata or host-platform endpoint ([`METADATA`]).
    Metadata,
    /// Link-local (169.254.0.0/16, fe80::/10).
    LinkLocal,
    /// Unspecified or "this network" (0.0.0.0/8, ::), which reaches the local host.
    Unspecified,
    /// Multicast (224.0.0.0/4, ff00::/8).
    Multicast,
    /// The limited broadcast address 255.255.255.255.
    Broadcast,
    /// Loopback (127.0.0.0/8, ::1), for an instance a tenant owns.
    LoopbackForTenants,
}

impl Rule {
    /// What the rule says, without the address (safe to show anyone).
    pub fn describe(&self) -> String {
        match self {
            Rule::Denied(net) => format!("in the denied range {net}"),
            Rule::Metadata => "a cloud metadata address".to_owned(),
            Rule::LinkLocal => "a link-local address".to_owned(),
            Rule::Unspecified => "an unspecified address".to_owned(),
            Rule::Multicast => "a multicast address".to_owned(),
            Rule::Broadcast => "the broadcast address".to_owned(),
            Rule::LoopbackForTenants => "a loopback address, which tenants' instances may not use \
                 (allow_loopback_for_tenants)"
                .to_owned(),
        }
    }
}

/// Cloud metadata and host-platform endpoints, refused unless allowed exactly: AWS, GCP, Azure,
/// OpenStack, DigitalOcean, Oracle (169.254.169.254), AWS ECS task metadata (169.254.170.2),
/// Tencent Cloud (169.254.0.23), Alibaba Cloud (100.100.100.200), Azure WireServer
/// (168.63.129.16), Oracle Cloud Classic (192.0.0.192), AWS IMDS over IPv6 (fd00:ec2::254).
pub const METADATA: [IpAddr; 7] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 0, 23)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)),
];

impl EgressPolicy {
    /// The requester of an instance with `owner`.
    pub fn requester(&self, owner: Option<TenantId>) -> Requester<'_> {
        match owner {
            None => Requester::Platform,
            Some(tenant) => Requester::Tenant {
                allow: self.tenants.get(&tenant).map_or(&[], Vec::as_slice),
            },
        }
    }
}

/// May an instance of `owner` be called at `ip`?
pub fn check(policy: &EgressPolicy, owner: Option<TenantId>, ip: IpAddr) -> Result<(), Refusal> {
    check_as(policy, policy.requester(owner), ip)
}

/// [`check`] for a requester already looked up (the shell's resolvers hold one).
pub fn check_as(
    policy: &EgressPolicy,
    requester: Requester<'_>,
    ip: IpAddr,
) -> Result<(), Refusal> {
    let ip = canonical(ip);
    let refuse = |rule| Err(Refusal { ip, rule });
    if let Some(net) = policy.deny.iter().find(|net| net.contains(&ip)) {
        return refuse(Rule::Denied(*net));
    }
    let own: &[IpNet] = match requester {
        Requester::Platform => &[],
        Requester::Tenant { allow } => allow,
    };
    // An allow entry lifts a built-in refusal only when it lies inside the refused range.
    let lifted = |range: IpNet| {
        policy
            .allow
            .iter()
            .chain(own)
            .any(|net| net.contains(&ip) && range.contains(net))
    };
    if let Some((rule, range)) = built_in(ip) {
        return if lifted(range) { Ok(()) } else { refuse(rule) };
    }
    if ip.is_loopback() && requester != Requester::Platform && !policy.allow_loopback_for_tenants {
        let range = match ip {
            IpAddr::V4(_) => net(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
            IpAddr::V6(_) => net(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
        };
        if !lifted(range) {
            return refuse(Rule::LoopbackForTenants);
        }
    }
    Ok(())
}

/// Of the addresses a host name resolved to, those the requester may call, in their order; the
/// first refusal when there were some and none remains.
pub fn allowed(
    policy: &EgressPolicy,
    requester: Requester<'_>,
    resolved: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, Refusal> {
    let mut kept = Vec::new();
    let mut first = None;
    for addr in resolved {
        match check_as(policy, requester, addr.ip()) {
            Ok(()) => kept.push(addr),
            Err(refusal) => {
                first.get_or_insert(refusal);
            }
        }
    }
    match first {
        Some(refusal) if kept.is_empty() => Err(refusal),
        _ => Ok(kept),
    }
}

/// An IPv4-mapped IPv6 address as its IPv4 address; others unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The built-in refusal of an address, with the range it covers.
fn built_in(ip: IpAddr) -> Option<(Rule, IpNet)> {
    if METADATA.contains(&ip) {
        return Some((Rule::Metadata, IpNet::from(ip)));
    }
    let v4 = |a, b, c, d, len| net(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), len);
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            if o[0] == 169 && o[1] == 254 {
                Some((Rule::LinkLocal, v4(169, 254, 0, 0, 16)))
            } else if o[0] == 0 {
                Some((Rule::Unspecified, v4(0, 0, 0, 0, 8)))
            } else if v.is_broadcast() {
                Some((Rule::Broadcast, v4(255, 255, 255, 255, 32)))
            } else if v.is_multicast() {
                Some((Rule::Multicast, v4(224, 0, 0, 0, 4)))
            } else {
                None
            }
        }
        IpAddr::V6(v) => {
            let v6 =
                |first: u16, len| net(IpAddr::V6(Ipv6Addr::new(first, 0, 0, 0, 0, 0, 0, 0)), len);
            if (v.segments()[0] & 0xffc0) == 0xfe80 {
                Some((Rule::LinkLocal, v6(0xfe80, 10)))
            } else if v.is_unspecified() {
                Some((Rule::Unspecified, v6(0, 128)))
            } else if v.is_multicast() {
                Some((Rule::Multicast, v6(0xff00, 8)))
            } else {
                None
            }
        }
    }
}

/// A network from an address and a prefix length that is known to fit.
fn net(ip: IpAddr, len: u8) -> IpNet {
    IpNet::new(ip, len).unwrap_or_else(|_| IpNet::from(ip))
}

#[cfg(test)]
mod tests;
