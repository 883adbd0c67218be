//! Tenants, the unit of isolation: keys, tasks, usage, budgets and secrets belong to one.

use crate::Timestamp;
use crate::id::TenantId;
use crate::rate::Rate;
use serde::{Deserialize, Serialize};

/// A tenant as stored and served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tenant {
    #[schema(value_type = String, format = Uuid)]
    pub id: TenantId,
    pub name: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Requests per second or minute across all of the tenant's keys; absent: the configured
    /// default (`rate_limits.per_tenant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
}

/// `POST /v1/tenants`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// 1–100 characters without control characters once surrounding whitespace is trimmed;
    /// unique.
    #[schema(
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]([^\x00-\x1f\x7f-\x9f]{0,98}[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
}

/// `PATCH /v1/tenants/{id}`: the fields to change. `rate_limit: null` returns to the default.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantUpdate {
    /// A new name, as for [`NewTenant::name`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]([^\x00-\x1f\x7f-\x9f]{0,98}[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    #[schema(value_type = Option<Rate>)]
    pub rate_limit: Option<Option<Rate>>,
}

/// `GET /v1/tenants`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantList {
    pub tenants: Vec<Tenant>,
}

/// Tells a missing field (leave as is) from an explicit `null` (clear).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(
        value: &Option<Option<T>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_update_tells_a_missing_rate_from_null() {
        let keep: TenantUpdate = serde_json::from_str(r#"{"name": "a"}"#).unwrap();
        assert_eq!(keep.rate_limit, None);
        let clear: TenantUpdate = serde_json::from_str(r#"{"rate_limit": null}"#).unwrap();
        assert_eq!(clear.rate_limit, Some(None));
        let set: TenantUpdate = serde_json::from_str(r#"{"rate_limit": "5/s"}"#).unwrap();
        assert_eq!(
            set.rate_limit.flatten().map(|r| r.to_string()),
            Some("5/s".into())
        );
    }
}
