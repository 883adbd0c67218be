//! State shared between control planes (docs/design.md §9, §11): the alert engine's silences and
//! board, leader leases and notifications. The SQL is the same text on both backends (`$n`
//! placeholders in order, which SQLite also reads); [`coordination_store!`] runs it on either.

use crate::rows::from_micros;
use crate::{LeaderLease, StoreResult};

/// Stores a silence, replacing one with the same id.
pub(crate) const PUT_SILENCE: &str = "INSERT INTO alert_silences (id, until, body) VALUES ($1, $2, $3) \
     ON CONFLICT (id) DO UPDATE SET until = excluded.until, body = excluded.body";

/// Deletes a silence, giving back its JSON.
pub(crate) const DELETE_SILENCE: &str = "DELETE FROM alert_silences WHERE id = $1 RETURNING body";

/// Deletes the silences that ended.
pub(crate) const FORGET_SILENCES: &str = "DELETE FROM alert_silences WHERE until <= $1";

/// The silences in force, oldest end first.
pub(crate) const SILENCES: &str = "SELECT body FROM alert_silences ORDER BY until, id";

/// Publishes a document of the board.
pub(crate) const PUT_BOARD: &str = "INSERT INTO alert_board (name, body, updated_at) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at";

/// A document of the board, with when it was published.
pub(crate) const BOARD: &str = "SELECT body, updated_at FROM alert_board WHERE name = $1";

/// Grants or renews a lease in one statement: inserted when missing; taken over when it is the
/// claimant's or ended before the claimant's now (the generation grows when the holder changes);
/// otherwise left alone, and `RETURNING` gives no row.
pub(crate) const CLAIM: &str = "\
    INSERT INTO leader_leases (name, holder, generation, expires_at) VALUES ($1, $2, 1, $3) \
    ON CONFLICT (name) DO UPDATE SET \
        generation = leader_leases.generation \
            + CASE WHEN leader_leases.holder = excluded.holder THEN 0 ELSE 1 END, \
        holder = excluded.holder, \
        expires_at = excluded.expires_at \
    WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at < $4 \
    RETURNING holder, generation, expires_at";

/// The lease as it stands (after a claim that changed nothing).
pub(crate) const CURRENT: &str =
    "SELECT holder, generation, expires_at FROM leader_leases WHERE name = $1";

/// Ends a holder's lease: it expires at the given time (just before now), so the next claim by
/// anyone succeeds.
pub(crate) const RELEASE: &str =
    "UPDATE leader_leases SET expires_at = $1 WHERE name = $2 AND holder = $3";

/// Forgets leases of a prefix (without `%` or `_`) that ended long ago.
pub(crate) const FORGET: &str =
    "DELETE FROM leader_leases WHERE name LIKE $1 || '%' AND expires_at < $2";

/// Counts the live leases of a prefix.
pub(crate) const LIVE: &str =
    "SELECT count(*) FROM leader_leases WHERE name LIKE $1 || '%' AND expires_at >= $2";

/// True while a term holds (holder, generation, not ended); share-locks the row on PostgreSQL,
/// which makes a competing claim wait for the caller's transaction.
pub(crate) const FENCE_PG: &str = "SELECT generation FROM leader_leases \
    WHERE name = $1 AND holder = $2 AND generation = $3 AND expires_at >= $4 FOR SHARE";
/// The same on SQLite, whose single writer already keeps claims out of the transaction.
pub(crate) const FENCE_SQLITE: &str = "SELECT generation FROM leader_leases \
    WHERE name = $1 AND holder = $2 AND generation = $3 AND expires_at >= $4";

/// A lease's columns.
pub(crate) type Row = (String, i64, i64);

pub(crate) fn lease(row: Row) -> StoreResult<LeaderLease> {
    let (holder, generation, expires_at) = row;
    Ok(LeaderLease {
        holder,
        generation,
        expires_at: from_micros(expires_at)?,
    })
}

/// [`crate::CoordinationStore`] for a backend, written once (see `crate::sql`), with the
/// backend's `notify` and `listen` given as `$dialect`.
macro_rules! coordination_store {
    ($store:ty, { $($dialect:tt)* }) => {
        #[async_trait::async_trait]
        impl crate::CoordinationStore for $store {
            async fn put_silence(
                &self,
                id: uuid::Uuid,
                until: flotilla_core::Timestamp,
                body: &str,
            ) -> crate::StoreResult<()> {
                let mut w = self.writer().await?;
                sqlx::query(crate::coordination::PUT_SILENCE)
                    .bind(id)
                    .bind(crate::rows::micros(until))
                    .bind(body)
                    .execute(w.conn())
                    .await?;
                w.commit().await
            }

            async fn delete_silence(&self, id: uuid::Uuid) -> crate::StoreResult<Option<String>> {
                let mut w = self.writer().await?;
                let body = sqlx::query_scalar(crate::coordination::DELETE_SILENCE)
                    .bind(id)
                    .fetch_optional(w.conn())
                    .await?;
                w.commit().await?;
                Ok(body)
            }

            async fn list_silences(
                &self,
                now: flotilla_core::Timestamp,
            ) -> crate::StoreResult<Vec<String>> {
                let mut w = self.writer().await?;
                sqlx::query(crate::coordination::FORGET_SILENCES)
                    .bind(crate::rows::micros(now))
                    .execute(w.conn())
                    .await?;
                let bodies = sqlx::query_scalar(crate::coordination::SILENCES)
                    .fetch_all(w.conn())
                    .await?;
                w.commit().await?;
                Ok(bodies)
            }

            async fn put_board(
                &self,
                name: &str,
                body: &str,
                now: flotilla_core::Timestamp,
            ) -> crate::StoreResult<()> {
                let mut w = self.writer().await?;
                sqlx::query(crate::coordination::PUT_BOARD)
                    .bind(name)
                    .bind(body)
                    .bind(crate::rows::micros(now))
                    .execute(w.conn())
                    .await?;
                w.commit().await
            }

            async fn get_board(
                &self,
                name: &str,
            ) -> crate::StoreResult<Option<(String, flotilla_core::Timestamp)>> {
                let row: Option<(String, i64)> = sqlx::query_as(crate::coordination::BOARD)
                    .bind(name)
                    .fetch_optional(self.reads())
                    .await?;
                row.map(|(body, at)| Ok((body, crate::rows::from_micros(at)?)))
                    .transpose()
            }

            async fn claim_lease(
                &self,
                name: &str,
                holder: &str,
                now: flotilla_core::Timestamp,
                until: flotilla_core::Timestamp,
            ) -> crate::StoreResult<crate::LeaderLease> {
                use crate::coordination::{CLAIM, CURRENT, Row, lease};
                let mut w = self.writer().await?;
                let claimed: Option<Row> = sqlx::query_as(CLAIM)
                    .bind(name)
                    .bind(holder)
                    .bind(crate::rows::micros(until))
                    .bind(crate::rows::micros(now))
                    .fetch_optional(w.conn())
                    .await?;
                let row = match claimed {
                    Some(row) => row,
                    None => sqlx::query_as(CURRENT).bind(name).fetch_one(w.conn()).await?,
                };
                w.commit().await?;
                lease(row)
            }

            async fn release_lease(
                &self,
                name: &str,
                holder: &str,
                now: flotilla_core::Timestamp,
            ) -> crate::StoreResult<bool> {
                let mut w = self.writer().await?;
                let n = sqlx::query(crate::coordination::RELEASE)
                    .bind(crate::rows::micros(now) - 1)
                    .bind(name)
                    .bind(holder)
                    .execute(w.conn())
                    .await?
                    .rows_affected();
                w.commit().await?;
                Ok(n > 0)
            }

            async fn live_leases(
                &self,
                prefix: &str,
                now: flotilla_core::Timestamp,
                forget_before: flotilla_core::Timestamp,
            ) -> crate::StoreResult<u64> {
                let mut w = self.writer().await?;
                sqlx::query(crate::coordination::FORGET)
                    .bind(prefix)
                    .bind(crate::rows::micros(forget_before))
                    .execute(w.conn())
                    .await?;
                let n: i64 = sqlx::query_scalar(crate::coordination::LIVE)
                    .bind(prefix)
                    .bind(crate::rows::micros(now))
                    .fetch_one(w.conn())
                    .await?;
                w.commit().await?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            $($dialect)*
        }
    };
}
pub(crate) use coordination_store;
