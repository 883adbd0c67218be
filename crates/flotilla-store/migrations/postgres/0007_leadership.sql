-- Leader leases (docs/design.md §9). Several control planes share this database; the loops that must
-- run once per deployment (the autoscaler, the alert engine, the fleet sweeper, the prunes) run
-- only on the replica holding the lease named `control-plane`.
--
-- A lease is granted when it is free, expired (expires_at, unix microseconds, before the
-- claimant's clock) or already the claimant's, in one upsert; the row lock serialises
-- claimants. `generation` grows by one each time the lease changes hands: a fencing token that
-- tells one term of leadership from the next, stamped on the leader-change events.
CREATE TABLE leader_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    generation BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
