//! How the two backends share their SQL.
//!
//! SQLite and PostgreSQL run the same statement text wherever their dialects agree: placeholders
//! are `$1`, `$2`, … (sqlx's SQLite driver binds `$n` by number, as [`tests`] checks), JSONB and
//! aggregate columns are read through `CAST(… AS TEXT)` / `CAST(… AS BIGINT)`, which both accept,
//! and nullable parameters need no casts because sqlx declares every parameter's type. Such a
//! statement is a `const` beside the capability it serves (`secrets.rs`, `access.rs`, …), and
//! the code that binds and runs it is written once, in a `macro_rules!` that each backend
//! expands into its trait impl (`secret_store!(SqliteStore)`).
//!
//! Why a macro rather than a function generic over `sqlx::Database`: a generic function must
//! spell out `Encode + Type` bounds for every bound type and an `Executor` bound for every
//! connection, on every function; expanded per backend, the same code type-checks against the
//! concrete driver with no bounds at all. Why not a query builder: the statements are fixed
//! texts, and a builder would only hide them. Each backend provides the three things the macros
//! use, with the same names:
//!
//! - `self.reads()`: the pool that reads run on (SQLite's read-only pool, PostgreSQL's pool);
//! - `self.begin()`: a write transaction (SQLite: `BEGIN IMMEDIATE` on the single writer);
//! - `self.writer()`: where a single-statement write runs, with `conn()` and `commit()`: a
//!   transaction on SQLite, whose every write goes through its single writer in one, and the
//!   pool itself on PostgreSQL, where one statement is atomic already.
//!
//! What stays per backend is what the dialects really do differently: bulk inserts (SQLite
//! multi-row `VALUES`, PostgreSQL `UNNEST` over arrays), claims (`FOR UPDATE SKIP LOCKED`), row
//! locks and advisory locks, `LISTEN/NOTIFY`, schemas and migrations.

#[cfg(test)]
mod tests {
    use sqlx::sqlite::SqlitePoolOptions;

    /// `$n` placeholders bind by number on SQLite, in any order and repeated, so one text serves
    /// both backends.
    #[tokio::test]
    async fn sqlite_binds_numbered_placeholders() -> Result<(), sqlx::Error> {
        let pool = SqlitePoolOptions::new().connect("sqlite::memory:").await?;
        let (a, b, again): (String, i64, String) = sqlx::query_as("SELECT $2, $1, $2")
            .bind(7_i64)
            .bind("two")
            .fetch_one(&pool)
            .await?;
        assert_eq!((a.as_str(), b, again.as_str()), ("two", 7, "two"));
        let null: (bool,) = sqlx::query_as("SELECT $1 IS NULL")
            .bind(None::<uuid::Uuid>)
            .fetch_one(&pool)
            .await?;
        assert!(null.0);
        Ok(())
    }
}
