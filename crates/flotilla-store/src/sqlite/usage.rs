//! The usage ledger and budgets on SQLite. Every write is one `BEGIN IMMEDIATE` transaction on
//! the single writer, so a reservation reads the window's spend and adds to it with no other
//! writer in between, in this process or another one sharing the file.

use super::{SqliteStore, pow2_chunks};
use crate::rows::micros;
use crate::usage::{fit, lock_order, stored, usage_columns};
use crate::{BudgetWindow, Reservation, StoreResult};
use flotilla_core::Timestamp;
use flotilla_core::budget::Spend;
use flotilla_core::id::TenantId;
use flotilla_core::money::Money;
use flotilla_core::usage::UsageRecord;
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
        sqlx::query(crate::usage::OPEN_WINDOW)
            .bind(tenant.0)
            .bind(window.period.as_str())
            .bind(micros(window.start))
            .execute(&mut *tx)
            .await?;
        // A stale reservation of this owner no longer counted, so the new amount replaces it.
        sqlx::query(crate::usage::ADD_RESERVATION)
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
        let after: i64 = sqlx::query_scalar(crate::usage::ADD_SPENT)
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
