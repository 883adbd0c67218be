-- The model gateway's rate-limit buckets. On SQLite the gateway keeps its buckets in memory (one
-- control plane by design, and no disk write on the hot path); the table exists so that both
-- backends offer the same store contract, which the behaviour suite checks on both.
--
-- A row is a `flotilla_core::quota::Bucket` exactly as it was last written: capacity (units),
-- period_ms (the time to refill from empty to full), level (units × period_ms, a 128-bit integer
-- that may be negative, as decimal text: exact and never computed on in SQL) and updated_at
-- (unix microseconds). The single writer serialises takes and settlements. A missing row is a
-- full bucket, so pruning deletes only buckets that are full.

CREATE TABLE rate_buckets (
    subject TEXT PRIMARY KEY NOT NULL,
    capacity INTEGER NOT NULL,
    period_ms INTEGER NOT NULL,
    level TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- Pruning looks for buckets that have been idle for a while.
CREATE INDEX rate_buckets_updated ON rate_buckets (updated_at);
