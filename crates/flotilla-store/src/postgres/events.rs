//! Fleet events on PostgreSQL.
//!
//! An identity column hands out ids when rows are inserted, not when they commit: without care, a
//! reader following the `after` cursor could see id 11 of one replica's batch before id 10 of
//! another's commits, and never see 10. Batches therefore take a transaction-level advisory lock
//! (keyed by the table's oid, so each schema has its own) before inserting, which makes ids
//! visible in order. Events are few and batched, so the serialisation costs nothing noticeable;
//! unlike a table lock, it never waits for (or cancels) autovacuum, and readers never wait.

use super::PostgresStore;
use crate::rows::{EventRow, event_columns, events_oldest_first, keep_param, micros};
use crate::{EventFilter, StoreResult};
use flotilla_core::event::{Event, NewEvent};
use sqlx::{Postgres, QueryBuilder};

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
        "INSERT INTO events (at, kind, agent_type, agent_id, message) \
         SELECT at, kind, agent_type, agent_id, message \
         FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::uuid[], $5::text[]) \
         WITH ORDINALITY AS e (at, kind, agent_type, agent_id, message, ord) \
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
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list(store: &PostgresStore, filter: &EventFilter) -> StoreResult<Vec<Event>> {
    let mut query = QueryBuilder::<Postgres>::new(concat!(
        "SELECT ",
        event_columns!(),
        " FROM events WHERE TRUE"
    ));
    if let Some(agent_type) = &filter.agent_type {
        query
            .push(" AND agent_type = ")
            .push_bind(agent_type.as_str());
    }
    if let Some(agent_id) = filter.agent_id {
        query.push(" AND agent_id = ").push_bind(agent_id.0);
    }
    if let Some(kind) = filter.kind {
        query.push(" AND kind = ").push_bind(kind.as_str());
    }
    match filter.after {
        Some(after) => query
            .push(" AND id > ")
            .push_bind(after)
            .push(" ORDER BY id ASC LIMIT "),
        None => query.push(" ORDER BY id DESC LIMIT "),
    };
    query.push_bind(i64::from(filter.limit));
    let rows = query
        .build_query_as::<EventRow>()
        .fetch_all(&store.pool)
        .await?;
    events_oldest_first(rows, filter.after.is_none())
}

pub(super) async fn prune(store: &PostgresStore, keep: u64) -> StoreResult<u64> {
    // The subquery is the newest id to delete; with `keep` events or fewer it is NULL, and
    // nothing matches.
    let deleted = sqlx::query(
        "DELETE FROM events WHERE id <= \
         (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET $1)",
    )
    .bind(keep_param(keep))
    .execute(&store.pool)
    .await?
    .rows_affected();
    Ok(deleted)
}
