//! Fleet events on PostgreSQL.
//!
//! An identity column hands out ids when rows are inserted, not when they commit: without care, a
//! reader following the `after` cursor could see id 11 of one replica's batch before id 10 of
//! another's commits, and never see 10. Batches therefore take a transaction-level advisory lock
//! (keyed by the table's oid, so each schema has its own) before inserting, which makes ids
//! visible in order. Events are few and batched, so the serialisation costs nothing noticeable;
//! unlike a table lock, it never waits for (or cancels) autovacuum, and readers never wait.

use super::PostgresStore;
use crate::StoreResult;
use crate::rows::micros;
use flotilla_core::event::NewEvent;

pub(super) async fn insert(store: &PostgresStore, events: &[NewEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut tx = store.pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock('events'::regclass::oid::int8)")
        .execute(&mut *tx)
        .await?;
    // One statement over arrays; rows take their ids in the batch's order.
    sqlx::query(
        "INSERT INTO events (at, kind, agent_type, agent_id, message, tenant_id) \
         SELECT at, kind, agent_type, agent_id, message, tenant_id \
         FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::uuid[]) \
         WITH ORDINALITY AS e (at, kind, agent_type, agent_id, message, tenant_id, ord) \
         ORDER BY ord",
    )
    .bind(events.iter().map(|e| micros(e.at)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.agent_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.agent_id.map(|a| a.0))
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.tenant.map(|t| t.0))
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
