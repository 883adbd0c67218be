-- Fair share between tenants (docs/design.md §4): the dispatcher claims per tenant, counts each
-- tenant's queued tasks (its queue limit) and finds the tenants with work queued by skipping
-- from one tenant to the next. One index leading with the tenant serves all three and replaces
-- the claim index that led with the agent type; queued_by_type reads it whole, as before.
DROP INDEX tasks_claim;
CREATE INDEX tasks_queue ON tasks (tenant_id, agent_type, priority DESC, id, not_before) WHERE status = 'queued';
