//! Fleet events on SQLite: appended and pruned through the single writer, listed from the readers.
//! The writer numbers events in commit order, so the `after` cursor never skips one.

use super::{SqliteStore, pow2_chunks};
use crate::rows::{EventRow, event_columns, events_oldest_first, keep_param, micros};
use crate::{EventFilter, StoreResult};
use flotilla_core::event::{Event, NewEvent};
use sqlx::{QueryBuilder, Sqlite};

pub(super) async fn insert(store: &SqliteStore, events: &[NewEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin().await?;
    // Rows of a multi-row insert take their ids in order.
    for chunk in pow2_chunks(events) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (at, kind, agent_type, agent_id, message) ",
        );
        query.push_values(chunk, |mut row, event| {
            row.push_bind(micros(event.at))
                .push_bind(event.kind.as_str())
                .push_bind(event.agent_type.as_str())
                .push_bind(event.agent_id.map(|a| a.0))
                .push_bind(event.message.as_str());
        });
        query.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list(store: &SqliteStore, filter: &EventFilter) -> StoreResult<Vec<Event>> {
    let mut query = QueryBuilder::<Sqlite>::new(concat!(
        "SELECT ",
        event_columns!(),
        " FROM events WHERE 1 = 1"
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
        .fetch_all(&store.reader)
        .await?;
    events_oldest_first(rows, filter.after.is_none())
}

pub(super) async fn prune(store: &SqliteStore, keep: u64) -> StoreResult<u64> {
    let mut tx = store.begin().await?;
    // The subquery is the newest id to delete; with `keep` events or fewer it is NULL, and
    // nothing matches.
    let deleted = sqlx::query(
        "DELETE FROM events WHERE id <= \
         (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?1)",
    )
    .bind(keep_param(keep))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(deleted)
}
