-- Fleet events (instance changes, scaling decisions, provisioner actions), numbered in the order
-- they were recorded. AUTOINCREMENT never reuses an id, even after pruning deleted the newest
-- rows, so a reader following the `after` cursor never misses or repeats an event. agent_id has
-- no foreign key: an instance's events outlive the instance.

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    agent_type TEXT NOT NULL,
    agent_id BLOB,
    message TEXT NOT NULL
) STRICT;

-- Listings of one pool or one instance, in id order.
CREATE INDEX events_agent_type ON events (agent_type, id);
CREATE INDEX events_agent_id ON events (agent_id, id) WHERE agent_id IS NOT NULL;
