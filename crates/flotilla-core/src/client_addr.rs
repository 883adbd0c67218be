//! Which address a request comes from, and which group of addresses it counts against.
//!
//! Behind a load balancer every request reaches the control plane from a few proxy addresses,
//! so the peer address alone would lump every client together. Only when the peer is one of
//! `[server] trusted_proxies` is the forwarding header believed: `Forwarded` (RFC 7239) when
//! present, else `X-Forwarded-For`. The header is read from its end (the hop nearest to us)
//! towards its start, skipping hops that are themselves trusted proxies; the first other hop is
//! the client. An entry that is not an address (`unknown`, an obfuscated name, garbage) stops
//! the walk: the hop that reported it is the client, since nothing before it can be trusted.
//! From any other peer the headers are ignored, so a client cannot choose its own address.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv6Addr};

/// The client address of a request that arrived from `peer` with these forwarding headers.
pub fn client_address(
    peer: IpAddr,
    trusted: &[IpNet],
    forwarded: Option<&str>,
    x_forwarded_for: Option<&str>,
) -> IpAddr {
    let is_trusted = |addr: &IpAddr| trusted.iter().any(|net| net.contains(addr));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<Option<IpAddr>> = match (forwarded, x_forwarded_for) {
        (Some(header), _) => forwarded_for(header),
        (None, Some(header)) => header.split(',').map(|hop| parse_hop(hop.trim())).collect(),
        (None, None) => return peer,
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(addr) => {
                client = addr;
                if !is_trusted(&addr) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// The `for=` values of a `Forwarded` header, in order (several elements, comma-separated).
fn forwarded_for(header: &str) -> Vec<Option<IpAddr>> {
    header
        .split(',')
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_hop(value.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// One hop: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:4711`; `None` for anything else.
fn parse_hop(text: &str) -> Option<IpAddr> {
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok());
        return port_ok.then(|| inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6))?;
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The group a source counts against: an IPv4 address alone, an IPv6 address by its first
/// `ipv6_prefix` bits (a host usually holds a whole /64, so single addresses would let it evade
/// any per-address limit). IPv4-mapped IPv6 addresses count as their IPv4 address.
pub fn source_group(addr: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nets(texts: &[&str]) -> Vec<IpNet> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("198.51.100.9");
        assert_eq!(
            client_address(peer, &trusted, Some("for=192.0.2.1"), Some("192.0.2.2")),
            peer
        );
        assert_eq!(client_address(peer, &[], None, Some("192.0.2.2")), peer);
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        // The client put a fake address first; the proxies appended the real one.
        assert_eq!(
            client_address(peer, &trusted, None, Some("1.2.3.4, 192.0.2.7, 10.0.0.2")),
            ip("192.0.2.7")
        );
        assert_eq!(
            client_address(
                peer,
                &trusted,
                Some(r#"for=1.2.3.4, for="[2001:db8::7]:4711";proto=https, for=10.0.0.2"#),
                Some("9.9.9.9"),
            ),
            ip("2001:db8::7")
        );
        assert_eq!(client_address(peer, &trusted, None, None), peer);
        // Every hop trusted: the first one.
        assert_eq!(
            client_address(peer, &trusted, None, Some("10.1.1.1, 10.2.2.2")),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn a_hop_that_is_not_an_address_stops_the_walk_at_the_hop_that_reported_it() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        for header in [
            "192.0.2.1, unknown, 10.0.0.2",
            "192.0.2.1, garbage",
            "_hidden",
        ] {
            let got = client_address(peer, &trusted, None, Some(header));
            assert!(trusted.iter().any(|n| n.contains(&got)), "{header}: {got}");
        }
        assert_eq!(
            client_address(peer, &trusted, Some("for=unknown"), None),
            peer
        );
    }

    #[test]
    fn hops_parse_with_ports_and_brackets() {
        assert_eq!(parse_hop("192.0.2.1:80"), Some(ip("192.0.2.1")));
        assert_eq!(parse_hop("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("2001:db8::1"), Some(ip("2001:db8::1")));
        for bad in [
            "",
            "unknown",
            "[2001:db8::1",
            "[2001:db8::1]:x",
            "1.2.3.4:99999",
            "a:1",
        ] {
            assert_eq!(parse_hop(bad), None, "{bad}");
        }
    }

    #[test]
    fn ipv6_sources_group_by_prefix() {
        assert_eq!(
            source_group(ip("2001:db8:1:2:aaaa::1"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            source_group(ip("2001:db8:1:2:ffff::9"), 64),
            source_group(ip("2001:db8:1:2::1"), 64)
        );
        assert_ne!(
            source_group(ip("2001:db8:1:3::1"), 64),
            source_group(ip("2001:db8:1:2::1"), 64)
        );
        assert_eq!(source_group(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(source_group(ip("2001:db8::1"), 0), ip("::"));
        assert_eq!(source_group(ip("192.0.2.1"), 64), ip("192.0.2.1"));
        assert_eq!(source_group(ip("::ffff:192.0.2.1"), 64), ip("192.0.2.1"));
    }
}
