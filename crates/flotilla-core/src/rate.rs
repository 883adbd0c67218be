//! Request rates: `"100/s"`, `"6000/m"`, as configured per key, per tenant and for
//! authentication failures per source. The shell enforces them with GCRA (`governor`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

/// A sustained rate of `count` requests per `per`, with bursts of up to `count` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Per,
}

/// The unit of a [`Rate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Per {
    Second,
    Minute,
}

impl Per {
    pub const fn duration(self) -> Duration {
        match self {
            Per::Second => Duration::from_secs(1),
            Per::Minute => Duration::from_secs(60),
        }
    }

    const fn suffix(self) -> &'static str {
        match self {
            Per::Second => "s",
            Per::Minute => "m",
        }
    }
}

impl Rate {
    /// The time between two requests at the sustained rate.
    pub fn interval(self) -> Duration {
        self.per.duration() / self.count.get()
    }
}

/// A rate that does not read `<count>/s` or `<count>/m`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{0}` is not a rate: write a positive whole number of requests per second or minute, e.g. `100/s` or `6000/m`"
)]
pub struct BadRate(pub String);

impl FromStr for Rate {
    type Err = BadRate;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadRate(s.to_owned());
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Per::Second,
            "m" | "min" | "minute" => Per::Minute,
            _ => return Err(bad()),
        };
        let count = count.trim().parse::<NonZeroU32>().map_err(|_| bad())?;
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.suffix())
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Rate {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            // A count of 1 to 4294967295 (u32) per second or minute, as `FromStr` reads it.
            .pattern(Some(
                r"^([1-9][0-9]{0,8}|[1-3][0-9]{9}|4[01][0-9]{8}|42[0-8][0-9]{7}|429[0-3][0-9]{6}|4294[0-8][0-9]{5}|42949[0-5][0-9]{4}|429496[0-6][0-9]{3}|4294967[01][0-9]{2}|42949672[0-8][0-9]|429496729[0-5])/(s|sec|second|m|min|minute)$",
            ))
            .examples([serde_json::json!("100/s")])
            .into()
    }
}

impl utoipa::ToSchema for Rate {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let rate: Rate = "100/s".parse().unwrap();
        assert_eq!(rate.to_string(), "100/s");
        assert_eq!(rate.interval(), Duration::from_millis(10));
        let rate: Rate = " 6000 / minute ".parse().unwrap();
        assert_eq!(rate.to_string(), "6000/m");
        assert_eq!(rate.interval(), Duration::from_millis(10));
    }

    #[test]
    fn malformed_rates_are_refused() {
        for text in ["", "100", "0/s", "-1/s", "1.5/s", "10/h", "x/s", "/s"] {
            assert!(text.parse::<Rate>().is_err(), "{text}");
        }
    }
}
