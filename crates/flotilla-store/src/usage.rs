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

/// Creates a window's counter row if missing.
pub(crate) const OPEN_WINDOW: &str = "INSERT INTO budget_spend \
     (tenant_id, period, window_start, spent_pico) VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING";
/// Adds to an owner's reservation; a stale one no longer counted, so the amount replaces it.
pub(crate) const ADD_RESERVATION: &str = "INSERT INTO budget_reservations \
     (tenant_id, period, window_start, owner, reserved_pico, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (tenant_id, period, window_start, owner) DO UPDATE SET \
     reserved_pico = CASE WHEN budget_reservations.updated_at < $7 THEN excluded.reserved_pico \
                     ELSE budget_reservations.reserved_pico + excluded.reserved_pico END, \
     updated_at = excluded.updated_at";
/// Adds to a window's spent counter, returning it.
pub(crate) const ADD_SPENT: &str = "INSERT INTO budget_spend \
     (tenant_id, period, window_start, spent_pico) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (tenant_id, period, window_start) DO UPDATE SET \
     spent_pico = budget_spend.spent_pico + excluded.spent_pico RETURNING spent_pico";
pub(crate) const SPEND: &str = "SELECT CAST(COALESCE(SUM(cost_pico), 0) AS BIGINT) FROM usage \
     WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3";
pub(crate) const DAILY: &str = concat!(
    "SELECT ",
    usage_day!(),
    " AS day, model, agent_type, COUNT(*) AS calls, \
     CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, \
     CAST(SUM(cached_input_tokens) AS BIGINT) AS cached_input_tokens, \
     CAST(SUM(output_tokens) AS BIGINT) AS output_tokens, \
     CAST(SUM(reasoning_tokens) AS BIGINT) AS reasoning_tokens, \
     CAST(COALESCE(SUM(cost_pico), 0) AS BIGINT) AS cost_pico, \
     CAST(SUM(CASE WHEN cost_pico IS NULL THEN 1 ELSE 0 END) AS BIGINT) AS unknown_cost_calls \
     FROM usage WHERE ($1 IS NULL OR tenant_id = $1) AND created_at >= $2 AND created_at < $3 \
     GROUP BY 1, 2, 3"
);
pub(crate) const PUT_BUDGET: &str = "INSERT INTO budgets \
     (tenant_id, period, limit_pico, thresholds, enforcement, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (tenant_id, period) DO UPDATE SET limit_pico = excluded.limit_pico, \
     thresholds = excluded.thresholds, enforcement = excluded.enforcement, \
     updated_at = excluded.updated_at";
pub(crate) const BUDGETS: &str = "SELECT tenant_id, period, limit_pico, \
     CAST(thresholds AS TEXT) AS thresholds, enforcement, updated_at FROM budgets \
     WHERE ($1 IS NULL OR tenant_id = $1) ORDER BY tenant_id, period";
pub(crate) const DELETE_BUDGET: &str = "DELETE FROM budgets WHERE tenant_id = $1 AND period = $2";
pub(crate) const MARK_THRESHOLD: &str = "INSERT INTO budget_thresholds_fired \
     (tenant_id, period, window_start, threshold, fired_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
pub(crate) const PRUNE_RESERVATIONS: &str =
    "DELETE FROM budget_reservations WHERE updated_at < $1 OR window_start < $2";
pub(crate) const PRUNE_WINDOWS: [&str; 2] = [
    "DELETE FROM budget_spend WHERE window_start < $1",
    "DELETE FROM budget_thresholds_fired WHERE window_start < $1",
];

/// [`crate::UsageStore`] for a backend `$store` of database `$db`: listings, budgets and pruning
/// written once (see `crate::sql`); bulk inserts, reservations, settlements and buckets, which
/// lock differently per backend, in the backend's `usage` and `buckets` modules.
macro_rules! usage_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl crate::UsageStore for $store {
            async fn insert_usage(
                &self,
                records: &[flotilla_core::usage::UsageRecord],
            ) -> crate::StoreResult<()> {
                usage::insert(self, records).await
            }

            async fn list_usage(
                &self,
                filter: &crate::UsageFilter,
            ) -> crate::StoreResult<Vec<flotilla_core::usage::UsageRecord>> {
                use crate::rows::micros_opt;
                let mut query = sqlx::QueryBuilder::<$db>::new(concat!(
                    "SELECT ",
                    crate::usage::usage_columns!(),
                    " FROM usage WHERE 1 = 1"
                ));
                if let Some(tenant) = filter.tenant_id {
                    query.push(" AND tenant_id = ").push_bind(tenant.0);
                }
                if let Some(task) = filter.task_id {
                    query.push(" AND task_id = ").push_bind(task.0);
                }
                if let Some(model) = &filter.model {
                    query.push(" AND model = ").push_bind(model.as_str());
                }
                if let Some(agent_type) = &filter.agent_type {
                    query
                        .push(" AND agent_type = ")
                        .push_bind(agent_type.as_str());
                }
                if let Some(since) = micros_opt(filter.since) {
                    query.push(" AND created_at >= ").push_bind(since);
                }
                if let Some(until) = micros_opt(filter.until) {
                    query.push(" AND created_at < ").push_bind(until);
                }
                if let Some(before) = filter.before {
                    query.push(" AND id < ").push_bind(before);
                }
                query
                    .push(" ORDER BY id DESC LIMIT ")
                    .push_bind(i64::from(filter.limit));
                query
                    .build_query_as::<crate::usage::UsageRow>()
                    .fetch_all(self.reads())
                    .await?
                    .into_iter()
                    .map(flotilla_core::usage::UsageRecord::try_from)
                    .collect()
            }

            async fn usage_spend(
                &self,
                tenant: flotilla_core::id::TenantId,
                since: flotilla_core::Timestamp,
                until: flotilla_core::Timestamp,
            ) -> crate::StoreResult<flotilla_core::money::Money> {
                let pico: i64 = sqlx::query_scalar(crate::usage::SPEND)
                    .bind(tenant.0)
                    .bind(crate::rows::micros(since))
                    .bind(crate::rows::micros(until))
                    .fetch_one(self.reads())
                    .await?;
                Ok(flotilla_core::money::Money::from_pico(pico))
            }

            async fn usage_daily(
                &self,
                tenant: Option<flotilla_core::id::TenantId>,
                since: flotilla_core::Timestamp,
                until: flotilla_core::Timestamp,
            ) -> crate::StoreResult<Vec<flotilla_core::usage::DailyUsage>> {
                let rows: Vec<crate::usage::DailyRow> = sqlx::query_as(crate::usage::DAILY)
                    .bind(tenant.map(|t| t.0))
                    .bind(crate::rows::micros(since))
                    .bind(crate::rows::micros(until))
                    .fetch_all(self.reads())
                    .await?;
                crate::usage::daily(rows)
            }

            async fn put_budget(
                &self,
                budget: &flotilla_core::budget::Budget,
            ) -> crate::StoreResult<()> {
                let mut w = self.writer().await?;
                sqlx::query(crate::usage::PUT_BUDGET)
                    .bind(budget.tenant_id.0)
                    .bind(budget.period.as_str())
                    .bind(budget.limit.pico())
                    .bind(sqlx::types::Json(&budget.thresholds))
                    .bind(budget.enforcement.as_str())
                    .bind(crate::rows::micros(budget.updated_at))
                    .execute(w.conn())
                    .await?;
                w.commit().await
            }

            async fn list_budgets(
                &self,
                tenant: Option<flotilla_core::id::TenantId>,
            ) -> crate::StoreResult<Vec<flotilla_core::budget::Budget>> {
                sqlx::query_as::<_, crate::usage::BudgetRow>(crate::usage::BUDGETS)
                    .bind(tenant.map(|t| t.0))
                    .fetch_all(self.reads())
                    .await?
                    .into_iter()
                    .map(flotilla_core::budget::Budget::try_from)
                    .collect()
            }

            async fn delete_budget(
                &self,
                tenant: flotilla_core::id::TenantId,
                period: flotilla_core::budget::Period,
            ) -> crate::StoreResult<bool> {
                let mut w = self.writer().await?;
                let deleted = sqlx::query(crate::usage::DELETE_BUDGET)
                    .bind(tenant.0)
                    .bind(period.as_str())
                    .execute(w.conn())
                    .await?
                    .rows_affected();
                w.commit().await?;
                Ok(deleted > 0)
            }

            async fn mark_budget_threshold(
                &self,
                tenant: flotilla_core::id::TenantId,
                period: flotilla_core::budget::Period,
                window_start: flotilla_core::Timestamp,
                threshold: u32,
                now: flotilla_core::Timestamp,
            ) -> crate::StoreResult<bool> {
                let mut w = self.writer().await?;
                let inserted = sqlx::query(crate::usage::MARK_THRESHOLD)
                    .bind(tenant.0)
                    .bind(period.as_str())
                    .bind(crate::rows::micros(window_start))
                    .bind(i64::from(threshold))
                    .bind(crate::rows::micros(now))
                    .execute(w.conn())
                    .await?
                    .rows_affected();
                w.commit().await?;
                Ok(inserted == 1)
            }

            async fn reserve_budget(
                &self,
                tenant: flotilla_core::id::TenantId,
                windows: &[crate::BudgetWindow],
                amount: flotilla_core::money::Money,
                owner: &str,
                now: flotilla_core::Timestamp,
                stale_before: flotilla_core::Timestamp,
            ) -> crate::StoreResult<crate::Reservation> {
                usage::reserve(self, tenant, windows, amount, owner, now, stale_before).await
            }

            async fn settle_budget(
                &self,
                tenant: flotilla_core::id::TenantId,
                windows: &[crate::BudgetWindow],
                reserved: flotilla_core::money::Money,
                actual: flotilla_core::money::Money,
                owner: &str,
                now: flotilla_core::Timestamp,
            ) -> crate::StoreResult<Vec<(flotilla_core::money::Money, flotilla_core::money::Money)>>
            {
                usage::settle(self, tenant, windows, reserved, actual, owner, now).await
            }

            async fn budget_spend(
                &self,
                tenant: flotilla_core::id::TenantId,
                window: &crate::BudgetWindow,
                stale_before: flotilla_core::Timestamp,
            ) -> crate::StoreResult<flotilla_core::budget::Spend> {
                usage::budget_spend(self, tenant, window, stale_before).await
            }

            async fn prune_budget_state(
                &self,
                stale_before: flotilla_core::Timestamp,
                windows_before: flotilla_core::Timestamp,
            ) -> crate::StoreResult<u64> {
                use crate::rows::micros;
                let mut tx = self.begin().await?;
                let mut deleted = sqlx::query(crate::usage::PRUNE_RESERVATIONS)
                    .bind(micros(stale_before))
                    .bind(micros(windows_before))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                for table in crate::usage::PRUNE_WINDOWS {
                    deleted += sqlx::query(table)
                        .bind(micros(windows_before))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                Ok(deleted)
            }

            async fn take_buckets(
                &self,
                takes: &[crate::BucketTake],
                now: flotilla_core::Timestamp,
            ) -> crate::StoreResult<Result<(), (usize, std::time::Duration)>> {
                buckets::take(self, takes, now).await
            }

            async fn settle_buckets(
                &self,
                settles: &[crate::BucketSettle],
                now: flotilla_core::Timestamp,
            ) -> crate::StoreResult<()> {
                buckets::settle(self, settles, now).await
            }

            async fn prune_buckets(
                &self,
                idle_before: flotilla_core::Timestamp,
                now: flotilla_core::Timestamp,
                limit: u32,
            ) -> crate::StoreResult<u64> {
                buckets::prune(self, idle_before, now, limit).await
            }
        }
    };
}
pub(crate) use usage_store;

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
