//! Exact money (docs/design.md §7): amounts in US dollars as a whole number of pico-dollars
//! (10⁻¹² USD), and prices per million tokens as a whole number of micro-dollars.
//!
//! The two units fit each other: tokens × (µ$ per million tokens) = pico-dollars, so the cost of
//! a call is an integer product with no rounding at all. Prices may have up to six decimal
//! places in dollars per million tokens (`0.0375`), which covers every published price list.
//! An `i64` of pico-dollars holds ±9.2 million dollars, far beyond one call or one tenant's
//! month; sums saturate rather than wrap. Never `f64`: amounts are parsed from and printed as
//! decimal strings.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Sub};
use std::str::FromStr;

/// Pico-dollars in one dollar.
const PICO_PER_USD: i64 = 1_000_000_000_000;
/// Micro-dollars in one dollar.
const MICRO_PER_USD: i64 = 1_000_000;

/// An exact amount of US dollars. Serialised as a decimal string, e.g. `"0.00125"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);

    /// From pico-dollars (the storage unit).
    pub const fn from_pico(pico: i64) -> Money {
        Money(pico)
    }

    /// In pico-dollars.
    pub const fn pico(self) -> i64 {
        self.0
    }

    /// Whole dollars.
    pub const fn from_usd(usd: i64) -> Money {
        Money(usd.saturating_mul(PICO_PER_USD))
    }

    /// `self × numerator / denominator`, rounded towards zero (shares of a budget, projections).
    /// Zero when `denominator` is 0.
    pub fn scale(self, numerator: i64, denominator: i64) -> Money {
        if denominator == 0 {
            return Money::ZERO;
        }
        let v = i128::from(self.0) * i128::from(numerator) / i128::from(denominator);
        Money(i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX }))
    }

    /// The ratio `self / other` as a float, for display and metrics only (never for money).
    pub fn ratio(self, other: Money) -> f64 {
        if other.0 == 0 {
            return 0.0;
        }
        #[expect(
            clippy::cast_precision_loss,
            reason = "a ratio for display and gauges, not an amount"
        )]
        let r = self.0 as f64 / other.0 as f64;
        r
    }

    /// The amount in dollars as a float, for metrics only (never for money).
    pub fn as_f64_usd(self) -> f64 {
        #[expect(
            clippy::cast_precision_loss,
            reason = "a gauge value, not an amount that is added up again"
        )]
        let r = self.0 as f64 / PICO_PER_USD as f64;
        r
    }

    /// Dollars for people: to the cent from one cent up, every digit below it (a fraction of a
    /// cent is not shown as zero). For messages and reports; the exact amount is `Display`.
    pub fn for_people(self) -> String {
        const PICO_PER_CENT: u64 = 10_000_000_000;
        let p = self.0;
        if p == 0 {
            return "0.00".to_owned();
        }
        if p.unsigned_abs() < PICO_PER_CENT {
            return self.to_string();
        }
        let sign = if p < 0 { "-" } else { "" };
        let cents = (p.unsigned_abs() + PICO_PER_CENT / 2) / PICO_PER_CENT;
        format!("{sign}{}.{:02}", cents / 100, cents % 100)
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub const fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }
}

impl Add for Money {
    type Output = Money;
    fn add(self, rhs: Money) -> Money {
        Money(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign for Money {
    fn add_assign(&mut self, rhs: Money) {
        self.0 = self.0.saturating_add(rhs.0);
    }
}

impl Sub for Money {
    type Output = Money;
    fn sub(self, rhs: Money) -> Money {
        Money(self.0.saturating_sub(rhs.0))
    }
}

impl Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Add::add)
    }
}

impl fmt::Display for Money {
    /// Dollars with as many decimals as needed (at most 12), e.g. `12.5`, `0.000125`, `3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_decimal(f, i128::from(self.0), 12)
    }
}

/// Writes `value / 10^scale` with trailing zeros trimmed.
fn write_decimal(f: &mut fmt::Formatter<'_>, value: i128, scale: u32) -> fmt::Result {
    let unit = 10_i128.pow(scale);
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.unsigned_abs();
    let unit = unit.unsigned_abs();
    let whole = abs / unit;
    let frac = abs % unit;
    if frac == 0 {
        return write!(f, "{sign}{whole}");
    }
    let digits = format!("{frac:0width$}", width = scale as usize);
    write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
}

/// A decimal string that is not an amount of the expected precision.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an amount in dollars with at most {max_decimals} decimals, e.g. `2.50`")]
pub struct BadAmount {
    pub text: String,
    pub max_decimals: u32,
}

/// Parses a non-negative decimal (`"12"`, `"0.0375"`) into units of 10^-scale.
fn parse_decimal(text: &str, scale: u32) -> Result<i64, BadAmount> {
    let bad = || BadAmount {
        text: text.to_owned(),
        max_decimals: scale,
    };
    let t = text.trim().strip_prefix('$').unwrap_or(text.trim());
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale as usize {
        return Err(bad());
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac_value: i64 = if frac.is_empty() {
        0
    } else {
        let padded = format!("{frac:0<width$}", width = scale as usize);
        padded.parse().map_err(|_| bad())?
    };
    whole
        .checked_mul(10_i64.pow(scale))
        .and_then(|w| w.checked_add(frac_value))
        .ok_or_else(bad)
}

impl FromStr for Money {
    type Err = BadAmount;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_decimal(s, 12).map(Money)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    /// A decimal string (`"2.50"`) or a whole number of dollars (`3`); floats are refused, as
    /// they cannot say an exact amount.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Whole(u32),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Raw::Whole(n) => Ok(Money::from_usd(i64::from(n))),
        }
    }
}

impl utoipa::PartialSchema for Money {
    /// A decimal string, or a whole number of dollars (what deserialisation accepts).
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(r"^\$?[0-9]{1,7}(\.[0-9]{1,12})?$"))
                    .examples([serde_json::json!("0.00125")]),
            )
            .item(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(u32::MAX)),
            )
            .description(Some(
                "An exact amount in US dollars: a decimal string (answers always use one) or a whole number",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Money {}

/// A price in US dollars per million tokens, exact to the micro-dollar (six decimals).
/// Serialised as a decimal string, e.g. `"1.25"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PricePerMillion(i64);

impl PricePerMillion {
    /// From micro-dollars per million tokens.
    pub const fn from_micro(micro: i64) -> PricePerMillion {
        PricePerMillion(micro)
    }

    pub const fn micro(self) -> i64 {
        self.0
    }

    /// What `tokens` tokens cost at this price (exact).
    pub fn cost(self, tokens: u64) -> Money {
        let v = i128::from(self.0) * i128::from(tokens);
        Money(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl fmt::Display for PricePerMillion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_decimal(f, i128::from(self.0), 6)
    }
}

impl FromStr for PricePerMillion {
    type Err = BadAmount;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_decimal(s, 6).map(PricePerMillion)
    }
}

impl Serialize for PricePerMillion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PricePerMillion {
    /// A decimal string (`"1.25"`), a whole number (`15`) or, in configuration files where
    /// prices are written as TOML floats, a float with at most six decimals.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Whole(u32),
            Float(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Raw::Whole(n) => Ok(PricePerMillion(i64::from(n) * MICRO_PER_USD)),
            // The float's shortest decimal form is what the user wrote (`0.075`), which is
            // then parsed exactly; more than six decimals is refused.
            Raw::Float(x) => x.to_string().parse().map_err(serde::de::Error::custom),
        }
    }
}

impl utoipa::PartialSchema for PricePerMillion {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A price in US dollars per million tokens, as a decimal string",
            ))
            .examples([serde_json::json!("1.25")])
            .into()
    }
}

impl utoipa::ToSchema for PricePerMillion {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn amounts_print_and_parse_exactly() {
        assert_eq!(
            "2.50".parse::<Money>().unwrap(),
            Money::from_pico(2_500_000_000_000)
        );
        assert_eq!(Money::from_pico(2_500_000_000_000).to_string(), "2.5");
        assert_eq!(Money::from_pico(1).to_string(), "0.000000000001");
        assert_eq!(Money::from_usd(3).to_string(), "3");
        assert_eq!(Money::from_pico(-1_500_000_000_000).to_string(), "-1.5");
        assert!("1.0000000000001".parse::<Money>().is_err());
        assert!("abc".parse::<Money>().is_err());
        assert!("-1".parse::<Money>().is_err());
        assert!("".parse::<Money>().is_err());
        assert!(".".parse::<Money>().is_err());
    }

    #[test]
    fn a_call_costs_tokens_times_price_with_no_rounding() {
        // gemini-2.0-flash input: $0.075 per million tokens; one token is 75 pico-dollars.
        let price: PricePerMillion = "0.075".parse().unwrap();
        assert_eq!(price.cost(1), Money::from_pico(75_000));
        assert_eq!(price.cost(1_000_000).to_string(), "0.075");
        // $0.0375 per million: 37.5 nano-dollars per token, exact in pico-dollars.
        let half: PricePerMillion = "0.0375".parse().unwrap();
        assert_eq!(half.cost(3).to_string(), "0.0000001125");
        assert!("0.0000001".parse::<PricePerMillion>().is_err());
    }

    #[test]
    fn prices_deserialize_from_toml_floats_exactly() {
        #[derive(Deserialize)]
        struct P {
            p: PricePerMillion,
        }
        let p: P = toml::from_str("p = 0.075").unwrap();
        assert_eq!(p.p.micro(), 75_000);
        let p: P = toml::from_str("p = 15").unwrap();
        assert_eq!(p.p.micro(), 15_000_000);
        let p: P = toml::from_str("p = \"1.25\"").unwrap();
        assert_eq!(p.p.to_string(), "1.25");
        assert!(toml::from_str::<P>("p = 0.00000001").is_err());
    }

    #[test]
    fn money_refuses_floats_in_json() {
        assert!(serde_json::from_str::<Money>("1.5").is_err());
        assert_eq!(
            serde_json::from_str::<Money>("\"1.5\"")
                .unwrap()
                .to_string(),
            "1.5"
        );
        assert_eq!(
            serde_json::from_str::<Money>("2").unwrap(),
            Money::from_usd(2)
        );
        assert_eq!(serde_json::to_string(&Money::from_usd(2)).unwrap(), "\"2\"");
    }

    proptest! {
        #[test]
        fn display_round_trips(pico in 0_i64..i64::MAX) {
            let m = Money::from_pico(pico);
            prop_assert_eq!(m.to_string().parse::<Money>().unwrap(), m);
        }

        #[test]
        fn cost_is_additive(price in 0_i64..100_000_000, a in 0_u64..10_000_000, b in 0_u64..10_000_000) {
            let p = PricePerMillion::from_micro(price);
            prop_assert_eq!(p.cost(a) + p.cost(b), p.cost(a + b));
        }
    }
}
