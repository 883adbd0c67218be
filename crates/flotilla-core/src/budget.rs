//! Budgets (docs/design.md §3, §7): a tenant's spending limit per calendar day or month (UTC), its
//! thresholds, and what happens past the limit — all as pure functions of the spend so far, the
//! reservations in flight and `now`.
//!
//! A call reserves the most it can cost (its price ceiling) before it goes upstream, and the
//! actual cost replaces the reservation afterwards. A `block` budget admits a call only if
//! `spent + reserved + ceiling ≤ limit`, so however many calls run at once, spend stays within
//! the limit; only calls whose price is unknown (reserved at zero) or whose usage had to be
//! estimated can take it past.

use crate::Timestamp;
use crate::id::TenantId;
use crate::money::Money;
use chrono::{Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// The window a budget counts over, calendar-aligned in UTC.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Period {
    Daily,
    Monthly,
}

impl Period {
    pub const ALL: [Period; 2] = [Period::Daily, Period::Monthly];

    /// The snake_case name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The period named `text` (`daily` or `monthly`).
    pub fn parse(text: &str) -> Option<Period> {
        text.parse().ok()
    }

    /// The window containing `now`: `[start, end)`, midnight UTC to midnight UTC.
    pub fn window(self, now: Timestamp) -> (Timestamp, Timestamp) {
        let day = now.date_naive();
        let (start, end) = match self {
            Period::Daily => (day, day + Duration::days(1)),
            Period::Monthly => {
                let first = day.with_day(1).unwrap_or(day);
                let next = if first.month() == 12 {
                    NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
                }
                .unwrap_or(first + Duration::days(31));
                (first, next)
            }
        };
        (midnight(start), midnight(end))
    }
}

fn midnight(day: NaiveDate) -> Timestamp {
    Utc.from_utc_datetime(&day.and_time(chrono::NaiveTime::MIN))
}

/// What happens once a budget is spent.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Enforcement {
    /// Calls are refused with 402 until the window resets.
    Block,
    /// Calls go to the model's configured cheaper model (`downgrade_to`), down the chain; a
    /// model with no cheaper one is refused as with `block`.
    Downgrade,
    /// Calls go on; only the threshold alerts fire.
    AlertOnly,
}

impl Enforcement {
    /// The snake_case name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The enforcement named `text` (`block`, `downgrade` or `alert_only`).
    pub fn parse(text: &str) -> Option<Enforcement> {
        text.parse().ok()
    }
}

/// A tenant's budget for one period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Budget {
    #[schema(value_type = String, format = Uuid)]
    pub tenant_id: TenantId,
    pub period: Period,
    pub limit: Money,
    /// Percentages of the limit at which an event and a notification fire, once per window.
    pub thresholds: Vec<u32>,
    pub enforcement: Enforcement,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// `PUT /v1/budgets/{period}`: sets a tenant's budget for a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetRequest {
    /// The limit in dollars, above 0, as a decimal string (`"250.00"`) or whole number.
    #[schema(schema_with = crate::wire::schema::positive_money)]
    pub limit: Money,
    /// Percentages of the limit (default: `[gateway] default_thresholds`, 50/80/90/100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::wire::schema::thresholds)]
    pub thresholds: Option<Vec<u32>>,
    /// Default `block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<Enforcement>,
}

/// Why a budget request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("the limit must be greater than 0")]
    ZeroLimit,
    #[error("thresholds must be percentages between 1 and 1000")]
    BadThreshold,
}

impl BudgetRequest {
    /// The budget this request sets.
    pub fn into_budget(
        self,
        tenant_id: TenantId,
        period: Period,
        default_thresholds: &[u32],
        now: Timestamp,
    ) -> Result<Budget, BudgetError> {
        if self.limit <= Money::ZERO {
            return Err(BudgetError::ZeroLimit);
        }
        let mut thresholds = self
            .thresholds
            .unwrap_or_else(|| default_thresholds.to_vec());
        if thresholds.iter().any(|t| *t == 0 || *t > 1000) {
            return Err(BudgetError::BadThreshold);
        }
        thresholds.sort_unstable();
        thresholds.dedup();
        Ok(Budget {
            tenant_id,
            period,
            limit: self.limit,
            thresholds,
            enforcement: self.enforcement.unwrap_or(Enforcement::Block),
            updated_at: now,
        })
    }
}

/// Spend in one budget window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spend {
    /// Actual cost of finished calls.
    pub spent: Money,
    /// Ceilings of calls in flight.
    pub reserved: Money,
}

/// The decision on one call against one budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Refuse: the budget cannot take the call's ceiling.
    Block(Exceeded),
    /// Switch to the cheaper model (the caller walks the downgrade chain and asks again).
    Downgrade(Exceeded),
}

/// Which budget a call ran into, for the 402 message and the response's downgrade note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub period: Period,
    pub spent: Money,
    pub limit: Money,
    pub resets_at: Timestamp,
}

impl Exceeded {
    /// `monthly budget of $100 is spent ($99.98 used); it resets at 2026-12-01T00:00:00Z`.
    pub fn message(&self) -> String {
        format!(
            "the tenant's {} budget of ${} is spent (${} used, counting calls in flight); it resets at {}",
            self.period.as_str(),
            self.limit,
            self.spent,
            self.resets_at.format("%Y-%m-%dT%H:%M:%SZ")
        )
    }
}

/// Whether a call whose cost is at most `ceiling` may go ahead under `budget`.
pub fn check(budget: &Budget, spend: Spend, ceiling: Money, now: Timestamp) -> Verdict {
    let committed = spend.spent + spend.reserved;
    if committed + ceiling <= budget.limit {
        return Verdict::Allow;
    }
    let exceeded = Exceeded {
        period: budget.period,
        spent: committed,
        limit: budget.limit,
        resets_at: budget.period.window(now).1,
    };
    match budget.enforcement {
        Enforcement::Block => Verdict::Block(exceeded),
        Enforcement::Downgrade => Verdict::Downgrade(exceeded),
        Enforcement::AlertOnly => Verdict::Allow,
    }
}

/// Thresholds (percent) crossed when spend grows from `before` to `after`: each one fires once
/// per window, when spend first reaches it.
pub fn crossed(thresholds: &[u32], limit: Money, before: Money, after: Money) -> Vec<u32> {
    thresholds
        .iter()
        .copied()
        .filter(|t| {
            let at = limit.scale(i64::from(*t), 100);
            before < at && after >= at
        })
        .collect()
}

/// A budget with its current window, for `GET /v1/budgets`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetStatus {
    #[serde(flatten)]
    pub budget: Budget,
    #[schema(value_type = String, format = DateTime)]
    pub window_start: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub resets_at: Timestamp,
    /// Actual spend in the window.
    pub spent: Money,
    /// Ceilings of calls in flight.
    pub reserved: Money,
    /// `spent / limit` (for display; the amounts are exact).
    pub utilisation: f64,
}

impl BudgetStatus {
    pub fn new(budget: Budget, spend: Spend, now: Timestamp) -> BudgetStatus {
        let (window_start, resets_at) = budget.period.window(now);
        BudgetStatus {
            utilisation: spend.spent.ratio(budget.limit),
            window_start,
            resets_at,
            spent: spend.spent,
            reserved: spend.reserved,
            budget,
        }
    }
}

/// `GET /v1/budgets`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetList {
    pub budgets: Vec<BudgetStatus>,
}

#[cfg(test)]
mod tests;
