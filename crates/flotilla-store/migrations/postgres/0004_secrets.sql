-- Secrets of the built-in vault. Only ciphertexts and wrapped data keys are stored: each version
-- is sealed with its own random data key, itself sealed by a master key kept outside the database
-- (master_key_id names which one). `secrets` keeps one row per path even after deletion, so
-- version numbers never repeat at a path and an old ciphertext put back (say, from a backup)
-- cannot pass for a newer version.

CREATE TABLE secrets (
    tenant_id UUID NOT NULL,
    path TEXT COLLATE "C" NOT NULL,
    last_version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT,
    PRIMARY KEY (tenant_id, path)
);

CREATE TABLE secret_versions (
    tenant_id UUID NOT NULL,
    path TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    ciphertext BYTEA NOT NULL,
    wrapped_key BYTEA NOT NULL,
    master_key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT,
    PRIMARY KEY (tenant_id, path, version)
);

-- Master-key rotation finds the versions still wrapped by an older key.
CREATE INDEX secret_versions_master_key ON secret_versions (master_key_id);
