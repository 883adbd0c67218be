//! The usage ledger and budgets on SQLite. Every write is one `BEGIN IMMEDIATE` transaction on
//! the single writer, so a reservation reads the window's spend and adds to it with no other
//! writer in between, in this process or another one sharing the file.

use super::{SqliteStore, pow2_chunks};
use crate::rows::{micros, micros_opt};
use crate::usage::{
    BudgetRow, DailyRow, UsageRow, daily, fit, lock_order, stored, usage_columns, usage_day,
};
use crate::{BudgetWindow, Reservation, StoreResult, UsageFilter};
use flotilla_core::Timestamp;
use flotilla_core::budget::{Budget, Period, Spend};
use flotilla_core::id::TenantId;
use flotilla_core::money::Money;
use flotilla_core::usage::{DailyUsage, UsageRecord};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

pub(super) async fn insert(store: &SqliteStore, records: &[UsageRecord]) -> StoreResult<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin().await?;
    for chunk in pow2_chunks(records) {
        let mut query =
            QueryBuilder::<Sqlite>::new(concat!("INSERT INTO usage (", usage_columns!(), ") "));
        query.push_values(chunk, |mut row, r| {
            row.push_bind(r.id)
                .push_bind(r.tenant_id.0)
                .push_bind(r.task_id.map(|t| t.0))
                .push_bind(r.key_id.as_str())
                .push_bind(r.agent_type.as_deref())
                .push_bind(r.model.as_str())
                .push_bind(r.requested_model.as_deref())
                .push_bind(r.provider.as_str())
                .push_bind(stored(r.tokens.input_tokens))
                .push_bind(stored(r.tokens.cached_input_tokens))
                .push_bind(stored(r.tokens.output_tokens))
                .push_bind(stored(r.tokens.reasoning_tokens))
                .push_bind(r.cost.map(Money::pico))
                .push_bind(r.estimated)
                .push_bind(stored(r.latency_ms))
                .push_bind(r.status.as_str())
                .push_bind(micros(r.created_at));
        });
        query.push(" ON CONFLICT (id) DO NOTHING");
        query.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list(
    store: &SqliteStore,
    filter: &UsageFilter,
) -> StoreResult<Vec<UsageRecord>> {
    let mut query = QueryBuilder::<Sqlite>::new(concat!(
        "SELECT ",
        usage_columns!(),
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
        .build_query_as::<UsageRow>()
        .fetch_all(&store.reader)
        .await?
        .into_iter()
        .map(UsageRecord::try_from)
        .collect()
}

pub(super) async fn spend(
    store: &SqliteStore,
    tenant: TenantId,
    since: Timestamp,
    until: Timestamp,
) -> StoreResult<Money> {
    let pico: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(cost_pico), 0) FROM usage \
         WHERE tenant_id = ?1 AND created_at >= ?2 AND created_at < ?3",
    )
    .bind(tenant.0)
    .bind(micros(since))
    .bind(micros(until))
    .fetch_one(&store.reader)
    .await?;
    Ok(Money::from_pico(pico))
}

pub(super) async fn daily_usage(
    store: &SqliteStore,
    tenant: Option<TenantId>,
    since: Timestamp,
    until: Timestamp,
) -> StoreResult<Vec<DailyUsage>> {
    let rows: Vec<DailyRow> = sqlx::query_as(concat!(
        "SELECT ",
        usage_day!(),
        " AS day, model, agent_type, COUNT(*) AS calls, \
         SUM(input_tokens) AS input_tokens, SUM(cached_input_tokens) AS cached_input_tokens, \
         SUM(output_tokens) AS output_tokens, SUM(reasoning_tokens) AS reasoning_tokens, \
         COALESCE(SUM(cost_pico), 0) AS cost_pico, \
         SUM(CASE WHEN cost_pico IS NULL THEN 1 ELSE 0 END) AS unknown_cost_calls \
         FROM usage WHERE (?1 IS NULL OR tenant_id = ?1) AND created_at >= ?2 AND created_at < ?3 \
         GROUP BY 1, 2, 3"
    ))
    .bind(tenant.map(|t| t.0))
    .bind(micros(since))
    .bind(micros(until))
    .fetch_all(&store.reader)
    .await?;
    daily(rows)
}

pub(super) async fn put_budget(store: &SqliteStore, budget: &Budget) -> StoreResult<()> {
    let mut tx = store.begin().await?;
    sqlx::query(
        "INSERT INTO budgets (tenant_id, period, limit_pico, thresholds, enforcement, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (tenant_id, period) DO UPDATE SET limit_pico = excluded.limit_pico, \
         thresholds = excluded.thresholds, enforcement = excluded.enforcement, \
         updated_at = excluded.updated_at",
    )
    .bind(budget.tenant_id.0)
    .bind(budget.period.as_str())
    .bind(budget.limit.pico())
    .bind(Json(&budget.thresholds))
    .bind(budget.enforcement.as_str())
    .bind(micros(budget.updated_at))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list_budgets(
    store: &SqliteStore,
    tenant: Option<TenantId>,
) -> StoreResult<Vec<Budget>> {
    sqlx::query_as::<_, BudgetRow>(
        "SELECT tenant_id, period, limit_pico, thresholds, enforcement, updated_at FROM budgets \
         WHERE (?1 IS NULL OR tenant_id = ?1) ORDER BY tenant_id, period",
    )
    .bind(tenant.map(|t| t.0))
    .fetch_all(&store.reader)
    .await?
    .into_iter()
    .map(Budget::try_from)
    .collect()
}

pub(super) async fn delete_budget(
    store: &SqliteStore,
    tenant: TenantId,
    period: Period,
) -> StoreResult<bool> {
    let mut tx = store.begin().await?;
    let deleted = sqlx::query("DELETE FROM budgets WHERE tenant_id = ?1 AND period = ?2")
        .bind(tenant.0)
        .bind(period.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(deleted > 0)
}

pub(super) async fn mark_threshold(
    store: &SqliteStore,
    tenant: TenantId,
    period: Period,
    window_start: Timestamp,
    threshold: u32,
    now: Timestamp,
) -> StoreResult<bool> {
    let mut tx = store.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO budget_thresholds_fired (tenant_id, period, window_start, threshold, fired_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
    )
    .bind(tenant.0)
    .bind(period.as_str())
    .bind(micros(window_start))
    .bind(i64::from(threshold))
    .bind(micros(now))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(inserted == 1)
}

/// The spend of one window as `conn` sees it.
async fn window_spend(
    conn: &mut SqliteConnection,
    tenant: TenantId,
    window: &BudgetWindow,
    stale_before: Timestamp,
) -> StoreResult<Spend> {
    let (spent, reserved): (i64, i64) = sqlx::query_as(
        "SELECT \
         COALESCE((SELECT spent_pico FROM budget_spend \
                   WHERE tenant_id = ?1 AND period = ?2 AND window_start = ?3), 0), \
         COALESCE((SELECT SUM(reserved_pico) FROM budget_reservations \
                   WHERE tenant_id = ?1 AND period = ?2 AND window_start = ?3 \
                   AND updated_at >= ?4), 0)",
    )
    .bind(tenant.0)
    .bind(window.period.as_str())
    .bind(micros(window.start))
    .bind(micros(stale_before))
    .fetch_one(conn)
    .await?;
    Ok(Spend {
        spent: Money::from_pico(spent),
        reserved: Money::from_pico(reserved),
    })
}

pub(super) async fn reserve(
    store: &SqliteStore,
    tenant: TenantId,
    windows: &[BudgetWindow],
    amount: Money,
    owner: &str,
    now: Timestamp,
    stale_before: Timestamp,
) -> StoreResult<Reservation> {
    let mut tx = store.begin().await?;
    let mut spends = Vec::with_capacity(windows.len());
    for window in windows {
        spends.push(window_spend(&mut tx, tenant, window, stale_before).await?);
    }
    let decision = fit(windows, spends, amount);
    if let Reservation::Refused { .. } = decision {
        tx.rollback().await?;
        return Ok(decision);
    }
    for &i in &lock_order(windows) {
        let Some(window) = windows.get(i) else {
            continue;
        };
        // The window's counter exists from its first reservation on, as on PostgreSQL, whose
        // reservations lock it.
        sqlx::query(
            "INSERT INTO budget_spend (tenant_id, period, window_start, spent_pico) \
             VALUES (?1, ?2, ?3, 0) ON CONFLICT DO NOTHING",
        )
        .bind(tenant.0)
        .bind(window.period.as_str())
        .bind(micros(window.start))
        .execute(&mut *tx)
        .await?;
        // A stale reservation of this owner no longer counted, so the new amount replaces it.
        sqlx::query(
            "INSERT INTO budget_reservations \
             (tenant_id, period, window_start, owner, reserved_pico, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (tenant_id, period, window_start, owner) DO UPDATE SET \
             reserved_pico = CASE WHEN budget_reservations.updated_at < ?7 THEN excluded.reserved_pico \
                             ELSE budget_reservations.reserved_pico + excluded.reserved_pico END, \
             updated_at = excluded.updated_at",
        )
        .bind(tenant.0)
        .bind(window.period.as_str())
        .bind(micros(window.start))
        .bind(owner)
        .bind(amount.pico())
        .bind(micros(now))
        .bind(micros(stale_before))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(decision)
}

pub(super) async fn settle(
    store: &SqliteStore,
    tenant: TenantId,
    windows: &[BudgetWindow],
    reserved: Money,
    actual: Money,
    owner: &str,
    now: Timestamp,
) -> StoreResult<Vec<(Money, Money)>> {
    let mut tx = store.begin().await?;
    let mut out = vec![(Money::ZERO, Money::ZERO); windows.len()];
    for &i in &lock_order(windows) {
        let Some(window) = windows.get(i) else {
            continue;
        };
        let after: i64 = sqlx::query_scalar(
            "INSERT INTO budget_spend (tenant_id, period, window_start, spent_pico) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (tenant_id, period, window_start) DO UPDATE SET \
             spent_pico = budget_spend.spent_pico + excluded.spent_pico \
             RETURNING spent_pico",
        )
        .bind(tenant.0)
        .bind(window.period.as_str())
        .bind(micros(window.start))
        .bind(actual.pico())
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE budget_reservations SET reserved_pico = MAX(reserved_pico - ?5, 0), \
             updated_at = ?6 \
             WHERE tenant_id = ?1 AND period = ?2 AND window_start = ?3 AND owner = ?4",
        )
        .bind(tenant.0)
        .bind(window.period.as_str())
        .bind(micros(window.start))
        .bind(owner)
        .bind(reserved.pico())
        .bind(micros(now))
        .execute(&mut *tx)
        .await?;
        if let Some(slot) = out.get_mut(i) {
            *slot = (Money::from_pico(after) - actual, Money::from_pico(after));
        }
    }
    tx.commit().await?;
    Ok(out)
}

pub(super) async fn budget_spend(
    store: &SqliteStore,
    tenant: TenantId,
    window: &BudgetWindow,
    stale_before: Timestamp,
) -> StoreResult<Spend> {
    let mut conn = store.reader.acquire().await?;
    window_spend(&mut conn, tenant, window, stale_before).await
}

pub(super) async fn prune(
    store: &SqliteStore,
    stale_before: Timestamp,
    windows_before: Timestamp,
) -> StoreResult<u64> {
    let mut tx = store.begin().await?;
    let mut deleted =
        sqlx::query("DELETE FROM budget_reservations WHERE updated_at < ?1 OR window_start < ?2")
            .bind(micros(stale_before))
            .bind(micros(windows_before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
    for table in [
        "DELETE FROM budget_spend WHERE window_start < ?1",
        "DELETE FROM budget_thresholds_fired WHERE window_start < ?1",
    ] {
        deleted += sqlx::query(table)
            .bind(micros(windows_before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    Ok(deleted)
}
