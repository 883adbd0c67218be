//! The model gateway's usage ledger and budgets as both backends read them: rows, their
//! conversion into domain types, and the rule by which a reservation fits its windows.
//!
//! Counts and money are stored as `i64` (tokens, pico-dollars); counts beyond `i64::MAX` are
//! stored saturated, which no real call reaches.

use crate::rows::from_micros;
use crate::{BudgetWindow, Reservation, StoreError, StoreResult};
use flotilla_core::budget::{Budget, Enforcement, Period, Spend};
use flotilla_core::id::{TaskId, TenantId};
use flotilla_core::money::Money;
use flotilla_core::usage::{DailyUsage, TokenUsage, UsageRecord, UsageStatus};
use uuid::Uuid;

/// The columns of a [`UsageRow`], the same on both backends.
macro_rules! usage_columns {
    () => {
        "id, tenant_id, task_id, key_id, agent_type, model, requested_model, provider, \
         input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_pico, estimated, \
         latency_ms, status, created_at"
    };
}
pub(crate) use usage_columns;

/// The UTC day of `created_at` (unix microseconds) as days since 1970-01-01, rounded down (also
/// before 1970, where plain integer division would round towards zero). The same integer
/// arithmetic on both backends, so both group calls into the same days.
macro_rules! usage_day {
    () => {
        "(created_at - (((created_at % 86400000000) + 86400000000) % 86400000000)) / 86400000000"
    };
}
pub(crate) use usage_day;

/// A count or amount as stored.
pub(crate) fn stored(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(column: &str, v: i64) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{column} {v} is negative")))
}

/// A row of `usage`.
#[derive(sqlx::FromRow)]
pub(crate) struct UsageRow {
    id: Uuid,
    tenant_id: Uuid,
    task_id: Option<Uuid>,
    key_id: String,
    agent_type: Option<String>,
    model: String,
    requested_model: Option<String>,
    provider: String,
    input_tokens: i64,
    cached_input_tokens: i64,
    output_tokens: i64,
    reasoning_tokens: i64,
    cost_pico: Option<i64>,
    estimated: bool,
    latency_ms: i64,
    status: String,
    created_at: i64,
}

impl TryFrom<UsageRow> for UsageRecord {
    type Error = StoreError;
    fn try_from(r: UsageRow) -> StoreResult<Self> {
        let status = UsageStatus::parse(&r.status).ok_or_else(|| {
            StoreError::Corrupt(format!("usage {}: unknown status {:?}", r.id, r.status))
        })?;
        Ok(UsageRecord {
            id: r.id,
            tenant_id: TenantId(r.tenant_id),
            task_id: r.task_id.map(TaskId),
            key_id: r.key_id,
            agent_type: r.agent_type,
            model: r.model,
            requested_model: r.requested_model,
            provider: r.provider,
            tokens: TokenUsage {
                input_tokens: unsigned("usage.input_tokens", r.input_tokens)?,
                cached_input_tokens: unsigned("usage.cached_input_tokens", r.cached_input_tokens)?,
                output_tokens: unsigned("usage.output_tokens", r.output_tokens)?,
                reasoning_tokens: unsigned("usage.reasoning_tokens", r.reasoning_tokens)?,
            },
            cost: r.cost_pico.map(Money::from_pico),
            estimated: r.estimated,
            latency_ms: unsigned("usage.latency_ms", r.latency_ms)?,
            status,
            created_at: from_micros(r.created_at)?,
        })
    }
}

/// A row of the daily summary.
#[derive(sqlx::FromRow)]
pub(crate) struct DailyRow {
    /// Days since 1970-01-01 ([`usage_day`]).
    day: i64,
    model: String,
    agent_type: Option<String>,
    calls: i64,
    input_tokens: i64,
    cached_input_tokens: i64,
    output_tokens: i64,
    reasoning_tokens: i64,
    cost_pico: i64,
    unknown_cost_calls: i64,
}

impl TryFrom<DailyRow> for DailyUsage {
    type Error = StoreError;
    fn try_from(r: DailyRow) -> StoreResult<Self> {
        let day = r
            .day
            .checked_mul(86_400)
            .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
            .ok_or_else(|| StoreError::Corrupt(format!("usage day {} is out of range", r.day)))?
            .date_naive();
        Ok(DailyUsage {
            day,
            model: r.model,
            agent_type: r.agent_type,
            calls: unsigned("usage calls", r.calls)?,
            tokens: TokenUsage {
                input_tokens: unsigned("usage.input_tokens", r.input_tokens)?,
                cached_input_tokens: unsigned("usage.cached_input_tokens", r.cached_input_tokens)?,
                output_tokens: unsigned("usage.output_tokens", r.output_tokens)?,
                reasoning_tokens: unsigned("usage.reasoning_tokens", r.reasoning_tokens)?,
            },
            cost: Money::from_pico(r.cost_pico),
            unknown_cost_calls: unsigned("usage unknown-cost calls", r.unknown_cost_calls)?,
        })
    }
}

/// Daily summaries from rows in any order, ordered by day, model, then agent type (`None`
/// first). Sorting here rather than in SQL keeps the order independent of the database's
/// collation and of where each backend puts NULLs.
pub(crate) fn daily(rows: Vec<DailyRow>) -> StoreResult<Vec<DailyUsage>> {
    let mut out = rows
        .into_iter()
        .map(DailyUsage::try_from)
        .collect::<StoreResult<Vec<_>>>()?;
    out.sort_by(|a, b| (a.day, &a.model, &a.agent_type).cmp(&(b.day, &b.model, &b.agent_type)));
    Ok(out)
}

/// A row of `budgets`, thresholds as JSON text.
#[derive(sqlx::FromRow)]
pub(crate) struct BudgetRow {
    tenant_id: Uuid,
    period: String,
    limit_pico: i64,
    thresholds: String,
    enforcement: String,
    updated_at: i64,
}

impl TryFrom<BudgetRow> for Budget {
    type Error = StoreError;
    fn try_from(r: BudgetRow) -> StoreResult<Self> {
        let corrupt =
            |what: String| StoreError::Corrupt(format!("budget of {}: {what}", r.tenant_id));
        let period = Period::parse(&r.period)
            .ok_or_else(|| corrupt(format!("unknown period {:?}", r.period)))?;
        let enforcement = Enforcement::parse(&r.enforcement)
            .ok_or_else(|| corrupt(format!("unknown enforcement {:?}", r.enforcement)))?;
        let thresholds: Vec<u32> = serde_json::from_str(&r.thresholds)
            .map_err(|e| corrupt(format!("thresholds are not a list of percentages: {e}")))?;
        Ok(Budget {
            tenant_id: TenantId(r.tenant_id),
            period,
            limit: Money::from_pico(r.limit_pico),
            thresholds,
            enforcement,
            updated_at: from_micros(r.updated_at)?,
        })
    }
}

/// The order in which a call takes the windows' locks: by period, then start. Every caller
/// locking in the same order is what keeps concurrent reservations from deadlocking.
pub(crate) fn lock_order(windows: &[BudgetWindow]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..windows.len()).collect();
    order.sort_by_key(|&i| windows.get(i).map(|w| (w.period, w.start)));
    order
}

/// Whether `amount` fits every window given their spends (in the same order): `Granted` with
/// the spends, or `Refused` with the first window that cannot take it.
pub(crate) fn fit(windows: &[BudgetWindow], spends: Vec<Spend>, amount: Money) -> Reservation {
    for (index, (window, spend)) in windows.iter().zip(&spends).enumerate() {
        let Some(limit) = window.limit else { continue };
        // Money's addition saturates, so a huge amount is refused rather than wrapping round.
        if spend.spent + spend.reserved + amount > limit {
            return Reservation::Refused {
                index,
                spend: *spend,
            };
        }
    }
    Reservation::Granted(spends)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn window(period: Period, day: u32, limit: Option<i64>) -> BudgetWindow {
        BudgetWindow {
            period,
            start: Utc
                .with_ymd_and_hms(2025, 3, day, 0, 0, 0)
                .single()
                .unwrap(),
            limit: limit.map(Money::from_pico),
        }
    }

    fn spend(spent: i64, reserved: i64) -> Spend {
        Spend {
            spent: Money::from_pico(spent),
            reserved: Money::from_pico(reserved),
        }
    }

    #[test]
    fn a_reservation_fits_up_to_the_limit_exactly_and_unlimited_windows_always_fit() {
        let windows = [
            window(Period::Daily, 2, Some(100)),
            window(Period::Monthly, 1, None),
        ];
        let spends = vec![spend(60, 30), spend(1_000, 1_000)];
        assert_eq!(
            fit(&windows, spends.clone(), Money::from_pico(10)),
            Reservation::Granted(spends.clone())
        );
        assert_eq!(
            fit(&windows, spends, Money::from_pico(11)),
            Reservation::Refused {
                index: 0,
                spend: spend(60, 30)
            }
        );
    }

    #[test]
    fn the_first_window_that_does_not_fit_is_named_in_the_callers_order() {
        let windows = [
            window(Period::Monthly, 1, Some(50)),
            window(Period::Daily, 2, Some(10)),
        ];
        assert_eq!(
            fit(
                &windows,
                vec![spend(0, 0), spend(5, 0)],
                Money::from_pico(6)
            ),
            Reservation::Refused {
                index: 1,
                spend: spend(5, 0)
            }
        );
    }

    #[test]
    fn windows_are_locked_by_period_then_start() {
        let windows = [
            window(Period::Monthly, 1, None),
            window(Period::Daily, 3, None),
            window(Period::Daily, 2, None),
        ];
        assert_eq!(lock_order(&windows), [2, 1, 0]);
    }

    #[test]
    fn days_of_stored_timestamps_round_down() {
        let row = |day| DailyRow {
            day,
            model: "m".into(),
            agent_type: None,
            calls: 1,
            input_tokens: 0,
            cached_input_tokens: 0,
            output_tokens: 0,
            reasoning_tokens: 0,
            cost_pico: 0,
            unknown_cost_calls: 0,
        };
        let day = DailyUsage::try_from(row(-1)).unwrap().day;
        assert_eq!(day.to_string(), "1969-12-31");
        let day = DailyUsage::try_from(row(20_000)).unwrap().day;
        assert_eq!(day.to_string(), "2024-10-04");
    }
}
