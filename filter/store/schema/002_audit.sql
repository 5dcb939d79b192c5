-- Schema 2: the fleet's copy of every node's audit records, and the fleet's hourly jobs.

-- One row per audit record, as its JSON line was written to the node's audit log. Partitioned
-- by day (UTC) so retention drops whole days: partitions `audit_records_pYYYYMMDD` are made
-- by the nodes as records arrive. `key` is given by the node when the record is made and kept
-- in its spool with it, so a batch sent again after a lost answer or a restart adds nothing.
CREATE TABLE audit_records (
    time timestamptz NOT NULL,
    key uuid NOT NULL,
    node text NOT NULL,
    door text NOT NULL,
    action text NOT NULL,
    rules text[] NOT NULL,
    monitor text[] NOT NULL,
    pack_version text NOT NULL,
    record jsonb NOT NULL,
    PRIMARY KEY (time, key)
) PARTITION BY RANGE (time);

-- When a fleet-wide job last ran, and where: a node that takes the job's advisory lock runs it
-- only if the last run is an hour old, so the fleet runs it once an hour whoever is up.
CREATE TABLE fleet_jobs (
    name text PRIMARY KEY,
    last_run timestamptz NOT NULL,
    node text NOT NULL
);
