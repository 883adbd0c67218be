//! The alert engine's shared state (silences, the alert board): the SQL both backends run, the
//! same text on both (`$n` placeholders in order, which SQLite also reads).

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
