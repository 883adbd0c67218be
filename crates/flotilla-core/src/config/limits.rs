//! `[rate_limits]`: requests per key, per tenant, and authentication failures per source.

use super::{ConfigError, invalid};
use crate::rate::Rate;
use serde::{Deserialize, Serialize};

/// `[rate_limits]`. Each limit reads `<count>/s` or `<count>/m` (GCRA: the count is also the
/// largest burst), or `off`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsSection {
    /// Requests per key, for keys created without a rate of their own.
    pub per_key: String,
    /// Requests per tenant across all its keys, for tenants without a rate of their own.
    pub per_tenant: String,
    /// Failed authentications per source address; past it, every request from that address is
    /// answered 429 until the rate allows again.
    pub auth_failures: String,
    /// IPv6 sources count against `auth_failures` by this prefix of their address (a host
    /// usually holds a whole /64); 32 to 128.
    pub auth_failures_ipv6_prefix: u8,
}

impl Default for RateLimitsSection {
    fn default() -> Self {
        Self {
            per_key: "1000/s".to_owned(),
            per_tenant: "5000/s".to_owned(),
            auth_failures: "10/m".to_owned(),
            auth_failures_ipv6_prefix: 64,
        }
    }
}

/// The validated limits; `None` is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    pub per_key: Option<Rate>,
    pub per_tenant: Option<Rate>,
    pub auth_failures: Option<Rate>,
    /// `auth_failures_ipv6_prefix`.
    pub auth_failures_ipv6_prefix: u8,
}

pub(super) fn validate(raw: &RateLimitsSection) -> Result<RateLimits, ConfigError> {
    let parse = |key: &str, text: &str| -> Result<Option<Rate>, ConfigError> {
        if text.trim() == "off" {
            return Ok(None);
        }
        text.parse::<Rate>()
            .map(Some)
            .map_err(|e| invalid(&format!("rate_limits.{key}"), format!("{e}, or `off`")))
    };
    if !(32..=128).contains(&raw.auth_failures_ipv6_prefix) {
        return Err(invalid(
            "rate_limits.auth_failures_ipv6_prefix",
            format!(
                "{} is not a prefix length from 32 to 128",
                raw.auth_failures_ipv6_prefix
            ),
        ));
    }
    Ok(RateLimits {
        per_key: parse("per_key", &raw.per_key)?,
        per_tenant: parse("per_tenant", &raw.per_tenant)?,
        auth_failures: parse("auth_failures", &raw.auth_failures)?,
        auth_failures_ipv6_prefix: raw.auth_failures_ipv6_prefix,
    })
}
