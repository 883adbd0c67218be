-- Fleet events (instance changes, scaling decisions, provisioner actions), numbered in the order
-- they were recorded. agent_id has no foreign key: an instance's events outlive the instance.

CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    agent_type TEXT NOT NULL,
    agent_id UUID,
    message TEXT NOT NULL
);

-- Listings of one pool or one instance, in id order.
CREATE INDEX events_agent_type ON events (agent_type, id);
CREATE INDEX events_agent_id ON events (agent_id, id) WHERE agent_id IS NOT NULL;
