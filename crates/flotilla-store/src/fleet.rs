//! Agent instances and the fleet's event log: the SQL both backends run, and
//! [`fleet_store!`], which runs it on either (see `crate::sql`).

/// The columns of an [`crate::rows::AgentRow`] (JSONB read as text on PostgreSQL).
macro_rules! agent_columns {
    () => {
        "id, agent_type, url, capacity, load, weight, status, version, \
         CAST(metadata AS TEXT) AS metadata, signing_secret, last_heartbeat, created_at, tenant_id"
    };
}

pub(crate) const INSERT_AGENT: &str = "INSERT INTO agents (id, agent_type, url, capacity, load, \
     weight, status, version, metadata, signing_secret, last_heartbeat, created_at, tenant_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
pub(crate) const AGENT: &str = concat!("SELECT ", agent_columns!(), " FROM agents WHERE id = $1");
pub(crate) const AGENTS: &str = concat!(
    "SELECT ",
    agent_columns!(),
    " FROM agents ORDER BY created_at, id"
);
pub(crate) const HEARTBEAT: &str =
    "UPDATE agents SET load = $2, status = $3, last_heartbeat = $4 WHERE id = $1";
pub(crate) const SET_STATUS: &str = "UPDATE agents SET status = $2 WHERE id = $1";
pub(crate) const DELETE_AGENT: &str = "DELETE FROM agents WHERE id = $1";
/// The subquery is the newest id to delete; with `keep` events or fewer it is NULL, and nothing
/// matches.
pub(crate) const PRUNE_EVENTS: &str =
    "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET $1)";

/// [`crate::FleetStore`] for a backend `$store` of database `$db`, written once, with the
/// backend's `insert_events` given as `$dialect`.
macro_rules! fleet_store {
    ($store:ty, $db:ty, { $($dialect:tt)* }) => {
        #[async_trait::async_trait]
        impl crate::FleetStore for $store {
            async fn insert_agent(
                &self,
                agent: &flotilla_core::agent::AgentInstance,
            ) -> crate::StoreResult<()> {
                use crate::rows::micros;
                let mut w = self.writer().await?;
                sqlx::query(crate::fleet::INSERT_AGENT)
                    .bind(agent.id.0)
                    .bind(&agent.agent_type)
                    .bind(&agent.url)
                    .bind(i64::from(agent.capacity))
                    .bind(i64::from(agent.load))
                    .bind(i64::from(agent.weight))
                    .bind(agent.status.as_str())
                    .bind(agent.version.as_deref())
                    .bind(sqlx::types::Json(&agent.metadata))
                    .bind(&agent.signing_secret)
                    .bind(micros(agent.last_heartbeat))
                    .bind(micros(agent.created_at))
                    .bind(agent.tenant_id.map(|t| t.0))
                    .execute(w.conn())
                    .await?;
                w.commit().await
            }

            async fn get_agent(
                &self,
                id: flotilla_core::id::AgentId,
            ) -> crate::StoreResult<Option<flotilla_core::agent::AgentInstance>> {
                sqlx::query_as::<_, crate::rows::AgentRow>(crate::fleet::AGENT)
                    .bind(id.0)
                    .fetch_optional(self.reads())
                    .await?
                    .map(crate::rows::AgentRow::into_agent)
                    .transpose()
            }

            async fn list_agents(
                &self,
            ) -> crate::StoreResult<Vec<flotilla_core::agent::AgentInstance>> {
                let rows = sqlx::query_as::<_, crate::rows::AgentRow>(crate::fleet::AGENTS)
                    .fetch_all(self.reads())
                    .await?;
                rows.into_iter().map(crate::rows::AgentRow::into_agent).collect()
            }

            async fn heartbeat_agent(
                &self,
                id: flotilla_core::id::AgentId,
                load: u32,
                status: flotilla_core::agent::AgentStatus,
                now: flotilla_core::Timestamp,
            ) -> crate::StoreResult<bool> {
                let mut w = self.writer().await?;
                let n = sqlx::query(crate::fleet::HEARTBEAT)
                    .bind(id.0)
                    .bind(i64::from(load))
                    .bind(status.as_str())
                    .bind(crate::rows::micros(now))
                    .execute(w.conn())
                    .await?
                    .rows_affected();
                w.commit().await?;
                Ok(n > 0)
            }

            async fn set_agent_status(
                &self,
                id: flotilla_core::id::AgentId,
                status: flotilla_core::agent::AgentStatus,
            ) -> crate::StoreResult<bool> {
                let mut w = self.writer().await?;
                let n = sqlx::query(crate::fleet::SET_STATUS)
                    .bind(id.0)
                    .bind(status.as_str())
                    .execute(w.conn())
                    .await?
                    .rows_affected();
                w.commit().await?;
                Ok(n > 0)
            }

            async fn delete_agent(&self, id: flotilla_core::id::AgentId) -> crate::StoreResult<bool> {
                let mut w = self.writer().await?;
                let n = sqlx::query(crate::fleet::DELETE_AGENT)
                    .bind(id.0)
                    .execute(w.conn())
                    .await?
                    .rows_affected();
                w.commit().await?;
                Ok(n > 0)
            }

            async fn list_events(
                &self,
                filter: &crate::EventFilter,
            ) -> crate::StoreResult<Vec<flotilla_core::event::Event>> {
                let mut query = sqlx::QueryBuilder::<$db>::new(concat!(
                    "SELECT ",
                    crate::rows::event_columns!(),
                    " FROM events WHERE 1 = 1"
                ));
                if let Some(agent_type) = &filter.agent_type {
                    query.push(" AND agent_type = ").push_bind(agent_type.as_str());
                }
                if let Some(agent_id) = filter.agent_id {
                    query.push(" AND agent_id = ").push_bind(agent_id.0);
                }
                if let Some(kind) = filter.kind {
                    query.push(" AND kind = ").push_bind(kind.as_str());
                }
                if let Some(reader) = filter.readable_by {
                    query
                        .push(" AND (tenant_id IS NULL OR tenant_id = ")
                        .push_bind(reader.0)
                        .push(")");
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
                    .build_query_as::<crate::rows::EventRow>()
                    .fetch_all(self.reads())
                    .await?;
                crate::rows::events_oldest_first(rows, filter.after.is_none())
            }

            async fn prune_events(&self, keep: u64) -> crate::StoreResult<u64> {
                let mut w = self.writer().await?;
                let deleted = sqlx::query(crate::fleet::PRUNE_EVENTS)
                    .bind(crate::rows::keep_param(keep))
                    .execute(w.conn())
                    .await?
                    .rows_affected();
                w.commit().await?;
                Ok(deleted)
            }

            $($dialect)*
        }
    };
}
pub(crate) use fleet_store;
