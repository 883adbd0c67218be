-- The model gateway's usage ledger and budgets.
--
-- `usage` keeps one row per model call, written in batches by the ledger; its id is the record's
-- UUIDv7, so a retried batch inserts nothing twice and id order is time order. Tokens are counted
-- in normal form (cached tokens inside input, reasoning tokens inside output). Money is whole
-- pico-dollars (10^-12 USD): exact, and a sum of calls never rounds. cost_pico is NULL when a
-- price was unknown, so an unknown cost is never mistaken for a free call. Tenants and tasks are
-- not referenced by foreign keys: the ledger outlives both.
--
-- Budgets are one row per tenant and period. The counters beside them are shared by every
-- control plane writing to this database: budget_spend holds the actual cost of finished calls
-- per window, budget_reservations the ceilings of calls still in flight per process (`owner`),
-- so that the reservations of a process that crashed stop counting once their updated_at is
-- stale, and budget_thresholds_fired makes each threshold fire once per window whichever
-- process sees it crossed first. window_start is the window's first instant (unix microseconds,
-- like every timestamp here). SQLite's single writer serialises reservations and settlements.

CREATE TABLE usage (
    id BLOB PRIMARY KEY NOT NULL,
    tenant_id BLOB NOT NULL,
    task_id BLOB,
    key_id TEXT NOT NULL,
    agent_type TEXT,
    model TEXT NOT NULL,
    requested_model TEXT,
    provider TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_pico INTEGER,
    estimated INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

-- A tenant's spend over a time range, and its listing newest first.
CREATE INDEX usage_tenant_created ON usage (tenant_id, created_at);
CREATE INDEX usage_tenant_id ON usage (tenant_id, id);
-- Daily summaries of every tenant over a time range.
CREATE INDEX usage_created ON usage (created_at);
-- The calls of one task.
CREATE INDEX usage_task ON usage (task_id, id) WHERE task_id IS NOT NULL;

CREATE TABLE budgets (
    tenant_id BLOB NOT NULL,
    period TEXT NOT NULL,
    limit_pico INTEGER NOT NULL,
    -- JSON array of percentages of the limit.
    thresholds TEXT NOT NULL,
    enforcement TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, period)
) STRICT;

CREATE TABLE budget_spend (
    tenant_id BLOB NOT NULL,
    period TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    spent_pico INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, period, window_start)
) STRICT;

CREATE TABLE budget_reservations (
    tenant_id BLOB NOT NULL,
    period TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    owner TEXT NOT NULL,
    reserved_pico INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, period, window_start, owner)
) STRICT;

-- Pruning finds the reservations of processes that stopped.
CREATE INDEX budget_reservations_updated ON budget_reservations (updated_at);

CREATE TABLE budget_thresholds_fired (
    tenant_id BLOB NOT NULL,
    period TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    threshold INTEGER NOT NULL,
    fired_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, period, window_start, threshold)
) STRICT;
