-- The alert engine's state that every control plane must see; see the PostgreSQL migration.
-- On SQLite one control plane runs, and silences survive its restarts.
CREATE TABLE alert_silences (
    id BLOB PRIMARY KEY NOT NULL,
    until INTEGER NOT NULL,
    body TEXT NOT NULL
);

CREATE TABLE alert_board (
    name TEXT PRIMARY KEY NOT NULL,
    body TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
