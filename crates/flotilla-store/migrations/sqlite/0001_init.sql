-- Flotilla's schema on SQLite. Timestamps are unix microseconds, UUIDs 16-byte blobs, JSON text.
-- Tenants are not referenced by foreign keys: the server may create keys and tasks for a tenant
-- before (or without) recording it.

CREATE TABLE tenants (
    id BLOB PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id BLOB NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
) STRICT;

CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE tasks (
    id BLOB PRIMARY KEY NOT NULL,
    tenant_id BLOB NOT NULL,
    agent_type TEXT NOT NULL,
    input TEXT NOT NULL,
    priority INTEGER NOT NULL,
    complexity REAL,
    idempotency_key TEXT,
    timeout_ms INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    output TEXT,
    error TEXT,
    usage TEXT,
    agent_id BLOB,
    trace_id TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    not_before INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    lease_owner TEXT,
    lease_expires_at INTEGER,
    -- NULL keys never conflict.
    UNIQUE (tenant_id, idempotency_key)
) STRICT;

-- Claims: queued tasks of a type by priority then age; not_before is checked from the index.
-- Also serves queued_by_type and next_not_before.
CREATE INDEX tasks_claim ON tasks (agent_type, priority DESC, id, not_before) WHERE status = 'queued';
-- Lease expiry and renewal scan only running tasks.
CREATE INDEX tasks_lease_expiry ON tasks (lease_expires_at) WHERE status = 'running';
CREATE INDEX tasks_lease_owner ON tasks (lease_owner) WHERE status = 'running';
-- Lists, newest first, per tenant or status; counts per status.
CREATE INDEX tasks_tenant ON tasks (tenant_id, id);
CREATE INDEX tasks_status ON tasks (status, id);

CREATE TABLE task_attempts (
    task_id BLOB NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    agent_id BLOB,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (task_id, number)
) STRICT;

CREATE TABLE agents (
    id BLOB PRIMARY KEY NOT NULL,
    agent_type TEXT NOT NULL,
    url TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    load INTEGER NOT NULL,
    weight INTEGER NOT NULL,
    status TEXT NOT NULL,
    version TEXT,
    metadata TEXT NOT NULL,
    signing_secret TEXT NOT NULL,
    last_heartbeat INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
