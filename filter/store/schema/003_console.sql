-- Schema 3: what the review console reads of the fleet's quarantine: activity outside a
-- message's own life (sign-ins, originals viewed) for its history, and indexes for its
-- filters by address and for the history's time order.

CREATE TABLE quarantine_activity (
    seq bigserial PRIMARY KEY,
    time timestamptz NOT NULL,
    node text NOT NULL,
    kind text NOT NULL,             -- signed_in | original_viewed | ...
    actor text NOT NULL,
    qid text,
    reason text NOT NULL DEFAULT '',  -- masked
    detail text NOT NULL DEFAULT ''   -- masked
);
CREATE INDEX quarantine_activity_time ON quarantine_activity (time);
CREATE INDEX quarantine_sender ON quarantine (lower(sender));
CREATE INDEX quarantine_purges_time ON quarantine_purges (time);
