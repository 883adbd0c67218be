-- Queue timeouts (docs/design.md §4): the leader fails queued tasks due for longer than their
-- pool's `queue_timeout_s`, oldest first, with a range scan over this index.
CREATE INDEX tasks_queued_since ON tasks (not_before) WHERE status = 'queued';
