-- The alert engine's state that every control plane must see (docs/design.md §9, §11). The engine
-- runs on the leader only; any replica answers the API.
--
-- alert_silences: one row per silence (its JSON as the API shows it), until when it holds
-- (unix microseconds); a silence survives restarts and a change of leader.
-- alert_board: documents the leader publishes after each evaluation round, by name (today
-- `active`: the pending and firing alerts as `GET /v1/alerts` shows them), with when.
CREATE TABLE alert_silences (
    id UUID PRIMARY KEY,
    until BIGINT NOT NULL,
    body TEXT NOT NULL
);

CREATE TABLE alert_board (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
