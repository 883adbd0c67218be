-- Tenants get unique names and optional rate limits; keys get optional rate limits; the audit log
-- is an append-only hash chain (seq without gaps, each row's hash covers the previous hash).

ALTER TABLE tenants ADD COLUMN rate_limit TEXT;
CREATE UNIQUE INDEX tenants_name ON tenants (name);

ALTER TABLE api_keys ADD COLUMN rate_limit TEXT;

CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT,
    tenant_id UUID,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    source TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

CREATE INDEX audit_tenant ON audit (tenant_id, seq);
