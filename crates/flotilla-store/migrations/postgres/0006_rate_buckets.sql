-- The model gateway's rate-limit buckets, shared by every control plane on this database
-- (docs/design.md §7: per-minute request and token limits and the per-hour cost cap hold across
-- replicas). One row per bucket, named by its subject (e.g. `tenant-req:<tenant id>`,
-- `key-tok:<key id>`).
--
-- A row is a `flotilla_core::quota::Bucket` exactly as it was last written: capacity (units),
-- period_ms (the time to refill from empty to full), level (units × period_ms, which can exceed
-- BIGINT — a cost cap of $1000 an hour is 10^15 pico-dollars × 3.6·10^6 ms — and can be negative
-- after a call used more than it reserved) and updated_at (unix microseconds, like every
-- timestamp here). The level is the decimal text of that 128-bit integer: exact, readable, and
-- never computed on in SQL; every decision is made in Rust on the restored bucket.
--
-- Each take or settlement locks its rows (INSERT ... ON CONFLICT DO UPDATE, one subject at a
-- time in subject order, so two calls never wait for each other in a cycle), decides, and
-- writes them back in one transaction. A missing row is a full bucket, so pruning deletes only
-- buckets that are full: it never changes a decision.

CREATE TABLE rate_buckets (
    subject TEXT PRIMARY KEY,
    capacity BIGINT NOT NULL,
    period_ms BIGINT NOT NULL,
    level TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Pruning looks for buckets that have been idle for a while.
CREATE INDEX rate_buckets_updated ON rate_buckets (updated_at);
