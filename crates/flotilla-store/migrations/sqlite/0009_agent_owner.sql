-- The tenant an agent instance belongs to (docs/security.md, "Agent trust model"): NULL for a
-- platform instance. Instances registered before owners existed become platform instances.
ALTER TABLE agents ADD COLUMN tenant_id BLOB;
