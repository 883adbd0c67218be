//! Tasks: the listings and counts both backends run alike, in [`task_store!`] (see `crate::sql`).
//! Inserts, claims, finishes, cancellations and lease handling lock and batch differently per
//! backend and come in as `$dialect`.

pub(crate) const COUNTS: &str = "SELECT status, COUNT(*) FROM tasks GROUP BY status";
pub(crate) const QUEUED: &str =
    "SELECT agent_type, COUNT(*) FROM tasks WHERE status = 'queued' GROUP BY agent_type";

/// [`crate::TaskStore`] for a backend `$store` of database `$db`, whose task columns are
/// `task_columns!()` at the call site.
macro_rules! task_store {
    ($store:ty, $db:ty, { $($dialect:tt)* }) => {
        #[async_trait::async_trait]
        impl crate::TaskStore for $store {
            async fn list_tasks(
                &self,
                filter: &crate::TaskFilter,
            ) -> crate::StoreResult<Vec<flotilla_core::task::Task>> {
                let mut query = sqlx::QueryBuilder::<$db>::new(concat!(
                    "SELECT ",
                    task_columns!(),
                    " FROM tasks WHERE 1 = 1"
                ));
                if let Some(tenant) = filter.tenant_id {
                    query.push(" AND tenant_id = ").push_bind(tenant.0);
                }
                if let Some(status) = filter.status {
                    query.push(" AND status = ").push_bind(status.as_str());
                }
                if let Some(agent_type) = &filter.agent_type {
                    query.push(" AND agent_type = ").push_bind(agent_type.as_str());
                }
                if let Some(before) = filter.before {
                    query.push(" AND id < ").push_bind(before.0);
                }
                query.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(filter.limit));
                let rows = query
                    .build_query_as::<crate::rows::TaskRow>()
                    .fetch_all(self.reads())
                    .await?;
                rows.into_iter().map(crate::rows::TaskRow::into_task).collect()
            }

            async fn task_counts_by_status(
                &self,
            ) -> crate::StoreResult<Vec<(flotilla_core::task::TaskStatus, u64)>> {
                let rows: Vec<(String, i64)> = sqlx::query_as(crate::tasks::COUNTS)
                    .fetch_all(self.reads())
                    .await?;
                crate::rows::status_counts(rows)
            }

            async fn queued_by_type(
                &self,
            ) -> crate::StoreResult<std::collections::BTreeMap<String, u64>> {
                let rows: Vec<(String, i64)> = sqlx::query_as(crate::tasks::QUEUED)
                    .fetch_all(self.reads())
                    .await?;
                rows.into_iter()
                    .map(|(agent_type, n)| Ok((agent_type, crate::rows::count("queued count", n)?)))
                    .collect()
            }

            $($dialect)*
        }
    };
}
pub(crate) use task_store;
