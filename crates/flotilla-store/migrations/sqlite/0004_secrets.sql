-- Secrets of the built-in vault. Only ciphertexts and wrapped data keys are stored: each version
-- is sealed with its own random data key, itself sealed by a master key kept outside the database
-- (master_key_id names which one). `secrets` keeps one row per path even after deletion, so
-- version numbers never repeat at a path and an old ciphertext put back (say, from a backup)
-- cannot pass for a newer version.

CREATE TABLE secrets (
    tenant_id BLOB NOT NULL,
    path TEXT NOT NULL,
    last_version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER,
    PRIMARY KEY (tenant_id, path)
) STRICT;

CREATE TABLE secret_versions (
    tenant_id BLOB NOT NULL,
    path TEXT NOT NULL,
    version INTEGER NOT NULL,
    ciphertext BLOB NOT NULL,
    wrapped_key BLOB NOT NULL,
    master_key_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT,
    PRIMARY KEY (tenant_id, path, version)
) STRICT;

-- Master-key rotation finds the versions still wrapped by an older key.
CREATE INDEX secret_versions_master_key ON secret_versions (master_key_id);
