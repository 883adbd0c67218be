-- Flotilla's schema on PostgreSQL. Timestamps are unix microseconds (BIGINT), so that both
-- backends round-trip them identically; JSON is JSONB. Tenants are not referenced by foreign
-- keys: the server may create keys and tasks for a tenant before (or without) recording it.

CREATE TABLE tenants (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant_id UUID NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);

CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE tasks (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL,
    agent_type TEXT NOT NULL,
    input JSONB NOT NULL,
    priority INTEGER NOT NULL,
    complexity DOUBLE PRECISION,
    idempotency_key TEXT,
    timeout_ms BIGINT NOT NULL,
    max_attempts INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    output JSONB,
    error TEXT,
    usage JSONB,
    agent_id UUID,
    trace_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    not_before BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    -- NULL keys never conflict.
    CONSTRAINT tasks_idempotency UNIQUE (tenant_id, idempotency_key)
);

-- Claims: queued tasks of a type by priority then age; not_before is checked from the index.
-- Also serves queued_by_type and next_not_before.
CREATE INDEX tasks_claim ON tasks (agent_type, priority DESC, id) INCLUDE (not_before) WHERE status = 'queued';
-- Lease expiry and renewal scan only running tasks.
CREATE INDEX tasks_lease_expiry ON tasks (lease_expires_at) WHERE status = 'running';
CREATE INDEX tasks_lease_owner ON tasks (lease_owner) WHERE status = 'running';
-- Lists, newest first, per tenant or status; counts per status.
CREATE INDEX tasks_tenant ON tasks (tenant_id, id);
CREATE INDEX tasks_status ON tasks (status, id);

CREATE TABLE task_attempts (
    task_id UUID NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    agent_id UUID,
    started_at BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (task_id, number)
);

CREATE TABLE agents (
    id UUID PRIMARY KEY,
    agent_type TEXT NOT NULL,
    url TEXT NOT NULL,
    capacity BIGINT NOT NULL,
    load BIGINT NOT NULL,
    weight BIGINT NOT NULL,
    status TEXT NOT NULL,
    version TEXT,
    metadata JSONB NOT NULL,
    signing_secret TEXT NOT NULL,
    last_heartbeat BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
