//! `[agents_egress]`: which addresses the control plane may call for agent instances (see
//! [`crate::egress`] for the decision and docs/security.md for the model). Validated into an
//! [`EgressPolicy`].

use super::{ConfigError, invalid};
use crate::egress::EgressPolicy;
use crate::id::TenantId;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[agents_egress]`. Without it: cloud metadata, link-local, unspecified, multicast and
/// broadcast addresses are refused for every instance, loopback for tenants' instances.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsEgressSection {
    /// CIDR ranges allowed for every instance, e.g. `["169.254.170.2/32"]`. An entry lifts a
    /// built-in refusal only when it lies inside the refused range (`0.0.0.0/0` lifts none).
    pub allow: Vec<String>,
    /// CIDR ranges refused for every instance, platform's included; they beat `allow`.
    pub deny: Vec<String>,
    /// Let instances registered with a tenant's key call loopback addresses (127.0.0.0/8, ::1).
    pub allow_loopback_for_tenants: bool,
    /// Ranges allowed for one tenant's instances, besides `allow`.
    pub tenants: Vec<AgentsEgressTenantSection>,
}

/// `[[agents_egress.tenants]]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsEgressTenantSection {
    /// The tenant's id (a UUID).
    pub tenant: String,
    /// CIDR ranges its instances may call besides `agents_egress.allow`.
    pub allow: Vec<String>,
}

pub(super) fn validate(raw: &AgentsEgressSection) -> Result<EgressPolicy, ConfigError> {
    let mut tenants = BTreeMap::new();
    for (i, section) in raw.tenants.iter().enumerate() {
        let key = format!("agents_egress.tenants[{i}]");
        let tenant = uuid::Uuid::parse_str(&section.tenant)
            .map(TenantId)
            .map_err(|e| {
                invalid(
                    &format!("{key}.tenant"),
                    format!("`{}` is not a tenant id (a UUID): {e}", section.tenant),
                )
            })?;
        let allow = cidrs(&format!("{key}.allow"), &section.allow)?;
        if tenants.insert(tenant, allow).is_some() {
            return Err(invalid(
                &format!("{key}.tenant"),
                format!("tenant {} is listed twice", section.tenant),
            ));
        }
    }
    Ok(EgressPolicy {
        allow: cidrs("agents_egress.allow", &raw.allow)?,
        deny: cidrs("agents_egress.deny", &raw.deny)?,
        allow_loopback_for_tenants: raw.allow_loopback_for_tenants,
        tenants,
    })
}

/// CIDR ranges (`10.0.0.0/8`, `fd00::/8`) or single addresses (`10.1.2.3`, a /32 or /128).
/// Host bits are refused (`10.0.0.1/8`), since they usually mean a typo in the prefix.
pub(super) fn cidrs(key: &str, texts: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    texts
        .iter()
        .map(|text| {
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    invalid(
                        key,
                        format!("`{text}` is not a CIDR range such as 10.0.0.0/8 or an address"),
                    )
                })?;
            if net.trunc() != net {
                return Err(invalid(
                    key,
                    format!("`{text}` has host bits set; did you mean {}?", net.trunc()),
                ));
            }
            Ok(net)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(allow: &[&str], tenant: &str) -> AgentsEgressSection {
        AgentsEgressSection {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: vec!["10.0.0.0/8".into()],
            allow_loopback_for_tenants: false,
            tenants: vec![AgentsEgressTenantSection {
                tenant: tenant.to_owned(),
                allow: vec!["127.0.0.1".into()],
            }],
        }
    }

    #[test]
    fn ranges_and_tenants_are_parsed() {
        let tenant = "0190a8a0-0000-7000-8000-000000000001";
        let policy = validate(&section(&["169.254.170.2/32", "fd00::/8"], tenant));
        let policy = policy.map_err(|e| e.to_string());
        assert!(
            policy
                .as_ref()
                .is_ok_and(|p| p.allow.len() == 2 && p.deny.len() == 1 && p.tenants.len() == 1)
        );
    }

    #[test]
    fn bad_entries_name_their_key() {
        let tenant = "0190a8a0-0000-7000-8000-000000000001";
        for (raw, key) in [
            (section(&["10.0.0.1/8"], tenant), "agents_egress.allow"),
            (section(&["nope"], tenant), "agents_egress.allow"),
            (section(&[], "t1"), "agents_egress.tenants[0].tenant"),
        ] {
            match validate(&raw) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => assert!(other.is_err(), "{raw:?}"),
            }
        }
        let mut twice = section(&[], tenant);
        twice.tenants.push(twice.tenants[0].clone());
        assert!(validate(&twice).is_err());
    }
}
