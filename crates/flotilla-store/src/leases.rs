//! Leader leases (docs/design.md §9): the SQL both backends run. It is the same text on both (`$n`
//! placeholders in order, which SQLite also reads); each backend runs it in its own way.

use crate::rows::from_micros;
use crate::{LeaderLease, StoreResult};

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
