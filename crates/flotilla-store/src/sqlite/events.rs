//! Fleet events on SQLite: appended and pruned through the single writer, listed from the readers.
//! The writer numbers events in commit order, so the `after` cursor never skips one.

use super::{SqliteStore, pow2_chunks};
use crate::StoreResult;
use crate::rows::micros;
use flotilla_core::event::NewEvent;
use sqlx::{QueryBuilder, Sqlite};

pub(super) async fn insert(store: &SqliteStore, events: &[NewEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin().await?;
    // Rows of a multi-row insert take their ids in order.
    for chunk in pow2_chunks(events) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (at, kind, agent_type, agent_id, message, tenant_id) ",
        );
        query.push_values(chunk, |mut row, event| {
            row.push_bind(micros(event.at))
                .push_bind(event.kind.as_str())
                .push_bind(event.agent_type.as_str())
                .push_bind(event.agent_id.map(|a| a.0))
                .push_bind(event.message.as_str())
                .push_bind(event.tenant.map(|t| t.0));
        });
        query.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}
