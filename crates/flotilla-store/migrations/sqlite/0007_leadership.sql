-- Leader leases (docs/design.md §9). On SQLite one control plane runs, so it always wins the lease;
-- the table exists so that both backends offer the same contract, which the behaviour suite
-- checks on both. See the PostgreSQL migration for the columns.
CREATE TABLE leader_leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    generation INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
