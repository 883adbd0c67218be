-- The tenant an event concerns (docs/design.md §10, "Tenant isolation"): NULL for a fleet fact
-- that names no tenant, which every reader of the fleet sees; otherwise only that tenant and the
-- platform read it. The platform's own events name its default tenant.
--
-- Events recorded before owners existed are given the narrowest owner that is certainly right:
-- an instance's events its instance's owner (NULL for a platform instance); events of instances
-- no longer registered, budget events and alert events the platform (their tenant is known only
-- from the message text).
ALTER TABLE events ADD COLUMN tenant_id BLOB;
UPDATE events SET tenant_id = (SELECT a.tenant_id FROM agents a WHERE a.id = events.agent_id)
    WHERE kind = 'instance';
UPDATE events SET tenant_id = X'00000000000070008000000000000001'
    WHERE kind IN ('alert', 'budget')
       OR (kind = 'instance' AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.id = events.agent_id));
