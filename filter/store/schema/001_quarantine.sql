-- Schema 1: the fleet's quarantine (records, bodies, history), the node registry and the
-- release-mark secret. Times are the database's clock, so every node reads one time line.

CREATE TABLE nodes (
    node text NOT NULL,
    door text NOT NULL,             -- relay | milter | cli | console
    version text NOT NULL,          -- mailgate's version
    pack_version text NOT NULL DEFAULT '',
    started timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    PRIMARY KEY (node, door)
);

CREATE TABLE secrets (
    name text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE quarantine (
    id text PRIMARY KEY,
    time timestamptz NOT NULL,
    node text NOT NULL,             -- the node whose door held it
    door text NOT NULL,
    queue_id text,
    message_id text NOT NULL,       -- masked
    sender text NOT NULL,
    recipients text[] NOT NULL,
    client_address text,
    subject text NOT NULL,          -- masked
    size integer NOT NULL,
    action text NOT NULL,
    rules text[] NOT NULL,
    monitor text[] NOT NULL,
    hits json NOT NULL,             -- samples masked by the engine; json keeps their order
    reason text NOT NULL,
    pack_version text NOT NULL,
    state text NOT NULL CHECK (state IN ('held', 'releasing', 'released', 'deleted')),
    -- The current or last release: its claim (also the release mark's nonce), who holds it
    -- and until when; a releasing record past lease_until is shown as release_unknown.
    claim text,
    claim_node text,
    claimed_at timestamptz,
    lease_until timestamptz,
    mark_used boolean NOT NULL DEFAULT false
);
CREATE INDEX quarantine_time ON quarantine (time, id);
CREATE INDEX quarantine_state_time ON quarantine (state, time);
CREATE INDEX quarantine_rules ON quarantine USING gin ((rules || monitor));

-- Apart from the record, so that listing never reads a body.
CREATE TABLE quarantine_bodies (
    id text PRIMARY KEY REFERENCES quarantine (id) ON DELETE CASCADE,
    raw bytea NOT NULL
);

CREATE TABLE quarantine_events (
    seq bigserial PRIMARY KEY,
    id text NOT NULL REFERENCES quarantine (id) ON DELETE CASCADE,
    time timestamptz NOT NULL,
    kind text NOT NULL,             -- quarantined | releasing | release_forced | released | ...
    actor text NOT NULL,
    node text NOT NULL,
    reply text NOT NULL DEFAULT '', -- the next hop's reply
    reason text NOT NULL DEFAULT ''
);
CREATE INDEX quarantine_events_id ON quarantine_events (id, seq);
CREATE INDEX quarantine_events_time ON quarantine_events (time);

CREATE TABLE quarantine_purges (
    seq bigserial PRIMARY KEY,
    time timestamptz NOT NULL,
    actor text NOT NULL,
    node text NOT NULL,
    older_than text NOT NULL,
    ids text[] NOT NULL
);
