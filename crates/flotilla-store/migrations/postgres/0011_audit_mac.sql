-- The audit chain is MAC'd (docs/security.md, "Audit log"): each entry names the master key whose
-- derived audit key MAC'd it. Entries written before have none; the first control plane to start
-- on this schema appends an `audit.reanchor` entry after them — only after the entries that
-- existed when this migration ran (`audit_legacy`), so a log rewritten later with plain hashes is
-- not re-anchored. Retention prunes by age (`audit_at`).
ALTER TABLE audit ADD COLUMN mac_key TEXT;
CREATE INDEX audit_at ON audit (at);
CREATE TABLE audit_legacy (through_seq BIGINT NOT NULL);
INSERT INTO audit_legacy (through_seq) SELECT COALESCE(MAX(seq), 0) FROM audit;
