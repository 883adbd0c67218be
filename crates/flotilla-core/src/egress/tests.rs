use super::*;
use proptest::prelude::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

fn nets(texts: &[&str]) -> Vec<IpNet> {
    texts.iter().filter_map(|t| t.parse().ok()).collect()
}

fn tenant(n: u128) -> TenantId {
    TenantId(uuid::Uuid::from_u128(n))
}

fn rule(policy: &EgressPolicy, owner: Option<TenantId>, text: &str) -> Option<Rule> {
    check(policy, owner, ip(text)).err().map(|r| r.rule)
}

#[test]
fn built_in_refusals_hold_for_everyone() {
    let policy = EgressPolicy::default();
    for owner in [None, Some(tenant(1))] {
        for (text, want) in [
            ("169.254.169.254", Rule::Metadata),
            ("100.100.100.200", Rule::Metadata),
            ("168.63.129.16", Rule::Metadata),
            ("fd00:ec2::254", Rule::Metadata),
            ("169.254.1.1", Rule::LinkLocal),
            ("fe80::1", Rule::LinkLocal),
            ("febf::1", Rule::LinkLocal),
            ("0.0.0.0", Rule::Unspecified),
            ("0.1.2.3", Rule::Unspecified),
            ("::", Rule::Unspecified),
            ("224.0.0.1", Rule::Multicast),
            ("239.255.255.250", Rule::Multicast),
            ("ff02::1", Rule::Multicast),
            ("255.255.255.255", Rule::Broadcast),
            // Mapped addresses are judged as their IPv4 address.
            ("::ffff:169.254.169.254", Rule::Metadata),
            ("::ffff:0.0.0.0", Rule::Unspecified),
        ] {
            assert_eq!(rule(&policy, owner, text), Some(want), "{text} {owner:?}");
        }
        for text in [
            "10.1.2.3",
            "192.168.1.1",
            "8.8.8.8",
            "2001:db8::1",
            "fec0::1",
        ] {
            assert_eq!(rule(&policy, owner, text), None, "{text}");
        }
    }
}

#[test]
fn loopback_is_the_platforms_unless_tenants_are_allowed_it() {
    let mut policy = EgressPolicy::default();
    for text in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
        assert_eq!(rule(&policy, None, text), None, "{text}");
        assert_eq!(
            rule(&policy, Some(tenant(1)), text),
            Some(Rule::LoopbackForTenants),
            "{text}"
        );
    }
    policy.tenants.insert(tenant(2), nets(&["127.0.0.1/32"]));
    assert_eq!(rule(&policy, Some(tenant(2)), "127.0.0.1"), None);
    assert_eq!(
        rule(&policy, Some(tenant(2)), "127.0.0.2"),
        Some(Rule::LoopbackForTenants)
    );
    assert_eq!(
        rule(&policy, Some(tenant(1)), "127.0.0.1"),
        Some(Rule::LoopbackForTenants)
    );
    policy.allow_loopback_for_tenants = true;
    assert_eq!(rule(&policy, Some(tenant(1)), "::1"), None);
}

#[test]
fn deny_applies_to_everyone_and_beats_allow() {
    let policy = EgressPolicy {
        allow: nets(&["10.0.0.0/8"]),
        deny: nets(&["10.9.0.0/16", "127.0.0.0/8"]),
        allow_loopback_for_tenants: true,
        tenants: BTreeMap::from([(tenant(1), nets(&["10.9.9.9/32"]))]),
    };
    for owner in [None, Some(tenant(1))] {
        assert!(matches!(
            rule(&policy, owner, "10.9.9.9"),
            Some(Rule::Denied(_))
        ));
        assert!(matches!(
            rule(&policy, owner, "::ffff:127.0.0.1"),
            Some(Rule::Denied(_))
        ));
        assert_eq!(rule(&policy, owner, "10.1.1.1"), None);
    }
}

#[test]
fn only_an_allow_entry_inside_a_refused_range_lifts_it() {
    let broad = EgressPolicy {
        allow: nets(&["0.0.0.0/0", "::/0"]),
        ..EgressPolicy::default()
    };
    assert_eq!(rule(&broad, None, "169.254.169.254"), Some(Rule::Metadata));
    assert_eq!(rule(&broad, None, "fe80::1"), Some(Rule::LinkLocal));
    assert_eq!(
        rule(&broad, Some(tenant(1)), "127.0.0.1"),
        Some(Rule::LoopbackForTenants)
    );
    let exact = EgressPolicy {
        allow: nets(&["169.254.169.254/32", "169.254.7.0/24"]),
        ..EgressPolicy::default()
    };
    assert_eq!(rule(&exact, Some(tenant(1)), "169.254.169.254"), None);
    assert_eq!(rule(&exact, None, "169.254.7.7"), None);
    assert_eq!(rule(&exact, None, "169.254.8.1"), Some(Rule::LinkLocal));
    let by_tenant = EgressPolicy {
        tenants: BTreeMap::from([(tenant(3), nets(&["169.254.170.2/32"]))]),
        ..EgressPolicy::default()
    };
    assert_eq!(rule(&by_tenant, Some(tenant(3)), "169.254.170.2"), None);
    assert_eq!(
        rule(&by_tenant, Some(tenant(4)), "169.254.170.2"),
        Some(Rule::Metadata)
    );
    assert_eq!(
        rule(&by_tenant, None, "169.254.170.2"),
        Some(Rule::Metadata)
    );
}

#[test]
fn a_refusal_names_the_address_and_the_rule() {
    let refusal = check(&EgressPolicy::default(), None, ip("169.254.169.254"));
    assert_eq!(
        refusal.map_err(|r| r.to_string()),
        Err("169.254.169.254 is a cloud metadata address (agents_egress)".to_owned())
    );
}

#[test]
fn resolved_addresses_are_filtered_and_the_first_refusal_is_kept() {
    let policy = EgressPolicy::default();
    let addr = |text: &str| SocketAddr::new(ip(text), 80);
    let mixed = [addr("169.254.169.254"), addr("10.0.0.1"), addr("::1")];
    assert_eq!(
        allowed(&policy, Requester::Tenant { allow: &[] }, mixed),
        Ok(vec![addr("10.0.0.1")])
    );
    let bad = [addr("169.254.169.254"), addr("::1")];
    assert_eq!(
        allowed(&policy, Requester::Tenant { allow: &[] }, bad).map_err(|r| r.rule),
        Err(Rule::Metadata)
    );
    assert_eq!(
        allowed(&policy, Requester::Platform, bad),
        Ok(vec![addr("::1")])
    );
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
    ]
}

proptest! {
    /// A mapped address gets exactly the decision of its IPv4 address.
    #[test]
    fn mapped_addresses_are_judged_as_ipv4(n in any::<u32>(), owner in proptest::option::of(1u128..3)) {
        let policy = EgressPolicy {
            deny: nets(&["10.0.0.0/8"]),
            tenants: BTreeMap::from([(tenant(1), nets(&["127.0.0.1/32"]))]),
            ..EgressPolicy::default()
        };
        let v4 = Ipv4Addr::from(n);
        let owner = owner.map(tenant);
        let direct = check(&policy, owner, IpAddr::V4(v4)).map_err(|r| r.rule);
        let mapped = check(&policy, owner, IpAddr::V6(v4.to_ipv6_mapped())).map_err(|r| r.rule);
        prop_assert_eq!(direct, mapped);
    }

    /// Nothing in a deny entry is ever allowed, and the always-refused ranges stay refused
    /// without an allow entry, whoever asks.
    #[test]
    fn deny_and_built_ins_always_refuse(ip in any_ip(), len in 0u8..=32, owner in proptest::option::of(1u128..3)) {
        let owner = owner.map(tenant);
        let denied = IpNet::new(canonical(ip), len.min(if canonical(ip).is_ipv4() { 32 } else { 128 }))
            .map(|n| n.trunc());
        if let Ok(denied) = denied {
            let policy = EgressPolicy { deny: vec![denied], allow: nets(&["0.0.0.0/0", "::/0"]), allow_loopback_for_tenants: true, ..EgressPolicy::default() };
            prop_assert!(check(&policy, owner, ip).is_err());
        }
        let open = EgressPolicy::default();
        let c = canonical(ip);
        let always = METADATA.contains(&c) || c.is_multicast() || c.is_unspecified()
            || matches!(c, IpAddr::V4(v) if v.is_link_local() || v.is_broadcast() || v.octets()[0] == 0)
            || matches!(c, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80);
        if always {
            prop_assert!(check(&open, owner, ip).is_err());
        }
    }
}
