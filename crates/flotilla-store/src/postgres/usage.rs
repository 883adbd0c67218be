//! The usage ledger and budgets on PostgreSQL, shared by several replicas.
//!
//! Reservations and settlements of a window serialise on its `budget_spend` row: each call
//! creates the row if missing, then locks it (`SELECT ... FOR UPDATE`) before it reads or changes
//! the window's reservations, and takes the locks of several windows in one fixed order
//! ([`lock_order`]) so that two calls never wait for each other in a cycle. Under READ COMMITTED
//! each statement after the lock sees every change committed before it, which is all the
//! isolation the check-then-add needs. Readers (`budget_spend`, listings) never lock.

use super::PostgresStore;
use crate::rows::micros;
use crate::usage::{fit, lock_order, stored, usage_columns};
use crate::{BudgetWindow, Reservation, StoreResult};
use flotilla_core::Timestamp;
use flotilla_core::budget::Spend;
use flotilla_core::id::TenantId;
use flotilla_core::money::Money;
use flotilla_core::usage::UsageRecord;
use sqlx::{PgConnection, PgExecutor};

pub(super) async fn insert(store: &PostgresStore, records: &[UsageRecord]) -> StoreResult<()> {
    if records.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&UsageRecord) -> i64| records.iter().map(f).collect::<Vec<_>>();
    // One statement over arrays, whatever the batch's size.
    sqlx::query(concat!(
        "INSERT INTO usage (",
        usage_columns!(),
        ") SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], \
         $13::int8[], $14::bool[], $15::int8[], $16::text[], $17::int8[]) \
         ON CONFLICT (id) DO NOTHING"
    ))
    .bind(records.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.tenant_id.0).collect::<Vec<_>>())
    .bind(
        records
            .iter()
            .map(|r| r.task_id.map(|t| t.0))
            .collect::<Vec<_>>(),
    )
    .bind(
        records
            .iter()
            .map(|r| r.key_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        records
            .iter()
            .map(|r| r.agent_type.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(records.iter().map(|r| r.model.as_str()).collect::<Vec<_>>())
    .bind(
        records
            .iter()
            .map(|r| r.requested_model.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        records
            .iter()
            .map(|r| r.provider.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(column(|r| stored(r.tokens.input_tokens)))
    .bind(column(|r| stored(r.tokens.cached_input_tokens)))
    .bind(column(|r| stored(r.tokens.output_tokens)))
    .bind(column(|r| stored(r.tokens.reasoning_tokens)))
    .bind(
        records
            .iter()
            .map(|r| r.cost.map(Money::pico))
            .collect::<Vec<_>>(),
    )
    .bind(records.iter().map(|r| r.estimated).collect::<Vec<_>>())
    .bind(column(|r| stored(r.latency_ms)))
    .bind(
        records
            .iter()
            .map(|r| r.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(column(|r| micros(r.created_at)))
    .execute(&store.pool)
    .await?;
    Ok(())
}

/// Creates the window's counter row if missing and locks it until the transaction ends; returns
/// the spent counter.
async fn lock_window(
    conn: &mut PgConnection,
    tenant: TenantId,
    window: &BudgetWindow,
) -> StoreResult<i64> {
    sqlx::query(crate::usage::OPEN_WINDOW)
        .bind(tenant.0)
        .bind(window.period.as_str())
        .bind(micros(window.start))
        .execute(&mut *conn)
        .await?;
    let spent: i64 = sqlx::query_scalar(
        "SELECT spent_pico FROM budget_spend \
         WHERE tenant_id = $1 AND period = $2 AND window_start = $3 FOR UPDATE",
    )
    .bind(tenant.0)
    .bind(window.period.as_str())
    .bind(micros(window.start))
    .fetch_one(&mut *conn)
    .await?;
    Ok(spent)
}

/// The sum of the window's reservations updated at or after `stale_before`.
async fn reserved<'c>(
    conn: impl PgExecutor<'c>,
    tenant: TenantId,
    window: &BudgetWindow,
    stale_before: Timestamp,
) -> StoreResult<i64> {
    let reserved: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(reserved_pico), 0)::BIGINT FROM budget_reservations \
         WHERE tenant_id = $1 AND period = $2 AND window_start = $3 AND updated_at >= $4",
    )
    .bind(tenant.0)
    .bind(window.period.as_str())
    .bind(micros(window.start))
    .bind(micros(stale_before))
    .fetch_one(conn)
    .await?;
    Ok(reserved)
}

pub(super) async fn reserve(
    store: &PostgresStore,
    tenant: TenantId,
    windows: &[BudgetWindow],
    amount: Money,
    owner: &str,
    now: Timestamp,
    stale_before: Timestamp,
) -> StoreResult<Reservation> {
    let order = lock_order(windows);
    let mut tx = store.pool.begin().await?;
    let mut spends = vec![Spend::default(); windows.len()];
    for &i in &order {
        let (Some(window), Some(slot)) = (windows.get(i), spends.get_mut(i)) else {
            continue;
        };
        let spent = lock_window(&mut tx, tenant, window).await?;
        // Read after the lock: every reservation committed before it is visible now.
        let reserved = reserved(&mut *tx, tenant, window, stale_before).await?;
        *slot = Spend {
            spent: Money::from_pico(spent),
            reserved: Money::from_pico(reserved),
        };
    }
    let decision = fit(windows, spends, amount);
    if let Reservation::Refused { .. } = decision {
        // Also undoes the counter rows this call created.
        tx.rollback().await?;
        return Ok(decision);
    }
    for &i in &order {
        let Some(window) = windows.get(i) else {
            continue;
        };
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
    store: &PostgresStore,
    tenant: TenantId,
    windows: &[BudgetWindow],
    reserved: Money,
    actual: Money,
    owner: &str,
    now: Timestamp,
) -> StoreResult<Vec<(Money, Money)>> {
    let mut tx = store.pool.begin().await?;
    let mut out = vec![(Money::ZERO, Money::ZERO); windows.len()];
    for &i in &lock_order(windows) {
        let Some(window) = windows.get(i) else {
            continue;
        };
        // The upsert locks the counter row like a reservation's SELECT ... FOR UPDATE does.
        let after: i64 = sqlx::query_scalar(crate::usage::ADD_SPENT)
            .bind(tenant.0)
            .bind(window.period.as_str())
            .bind(micros(window.start))
            .bind(actual.pico())
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE budget_reservations SET reserved_pico = GREATEST(reserved_pico - $5, 0), \
             updated_at = $6 \
             WHERE tenant_id = $1 AND period = $2 AND window_start = $3 AND owner = $4",
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
    store: &PostgresStore,
    tenant: TenantId,
    window: &BudgetWindow,
    stale_before: Timestamp,
) -> StoreResult<Spend> {
    let (spent, reserved): (i64, i64) = sqlx::query_as(
        "SELECT \
         COALESCE((SELECT spent_pico FROM budget_spend \
                   WHERE tenant_id = $1 AND period = $2 AND window_start = $3), 0), \
         COALESCE((SELECT SUM(reserved_pico) FROM budget_reservations \
                   WHERE tenant_id = $1 AND period = $2 AND window_start = $3 \
                   AND updated_at >= $4), 0)::BIGINT",
    )
    .bind(tenant.0)
    .bind(window.period.as_str())
    .bind(micros(window.start))
    .bind(micros(stale_before))
    .fetch_one(&store.pool)
    .await?;
    Ok(Spend {
        spent: Money::from_pico(spent),
        reserved: Money::from_pico(reserved),
    })
}
