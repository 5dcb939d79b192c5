-- Schema 4: the review console's filters by domain and recipient and its text search through
-- indexes (issue 13), so that a page of a 100,000-message quarantine reads only what it shows.
-- pg_trgm ships with PostgreSQL (Debian: in postgresql-15) and is a trusted extension: the
-- database's owner makes it here; a DBA may make it beforehand instead.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- What the filters compare, kept with each record by PostgreSQL itself (generated columns,
-- so every way a record is written fills them) and indexed. The functions read only their
-- arguments (text[] to text involves no setting): immutable, as a generated column needs.
CREATE FUNCTION mailgate_domains(sender text, recipients text[]) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT ARRAY(SELECT DISTINCT lower(substring(a FROM '@([^@]*)$'))
                       FROM unnest(sender || recipients) AS a) $$;
CREATE FUNCTION mailgate_lower(addresses text[]) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT ARRAY(SELECT lower(a) FROM unnest(addresses) AS a) $$;
-- What a text search looks in, as the local store's search_text: the id, the (masked)
-- Subject, the sender and the recipients, a line each.
CREATE FUNCTION mailgate_search_text(id text, subject text, sender text, recipients text[])
    RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT id || E'\n' || subject || E'\n' || sender || E'\n'
                 || array_to_string(recipients, E'\n') $$;

ALTER TABLE quarantine
    ADD COLUMN domains text[] GENERATED ALWAYS AS (mailgate_domains(sender, recipients)) STORED,
    ADD COLUMN recipients_lower text[] GENERATED ALWAYS AS (mailgate_lower(recipients)) STORED,
    ADD COLUMN search text
        GENERATED ALWAYS AS (mailgate_search_text(id, subject, sender, recipients)) STORED;
CREATE INDEX quarantine_domains ON quarantine USING gin (domains);
CREATE INDEX quarantine_recipients ON quarantine USING gin (recipients_lower);
CREATE INDEX quarantine_search ON quarantine USING gin (search gin_trgm_ops);

-- Each message's rules (enforce and monitor) and domains (sender's and recipients') with its
-- state and time, kept by triggers as records are written and change state, as the local
-- store keeps message_rules and message_domains: a count by rule or by domain, and the
-- counts per rule of the start page, come out of one index.
CREATE TABLE quarantine_rule_hits (
    rule text NOT NULL,
    id text NOT NULL REFERENCES quarantine (id) ON DELETE CASCADE,
    state text NOT NULL,
    time timestamptz NOT NULL,
    PRIMARY KEY (rule, id)
);
CREATE INDEX quarantine_rule_hits_state ON quarantine_rule_hits (state, rule, time);
CREATE INDEX quarantine_rule_hits_rule ON quarantine_rule_hits (rule, state, time);
CREATE INDEX quarantine_rule_hits_id ON quarantine_rule_hits (id);
CREATE TABLE quarantine_domain_hits (
    domain text NOT NULL,
    id text NOT NULL REFERENCES quarantine (id) ON DELETE CASCADE,
    state text NOT NULL,
    time timestamptz NOT NULL,
    PRIMARY KEY (domain, id)
);
CREATE INDEX quarantine_domain_hits_state ON quarantine_domain_hits (domain, state, time);
CREATE INDEX quarantine_domain_hits_id ON quarantine_domain_hits (id);
CREATE FUNCTION mailgate_hits_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO quarantine_rule_hits (rule, id, state, time)
        SELECT DISTINCT r, NEW.id, NEW.state, NEW.time FROM unnest(NEW.rules || NEW.monitor) AS r;
    INSERT INTO quarantine_domain_hits (domain, id, state, time)
        SELECT DISTINCT d, NEW.id, NEW.state, NEW.time FROM unnest(NEW.domains) AS d
        WHERE d IS NOT NULL;
    RETURN NULL;
END $$;
CREATE FUNCTION mailgate_hits_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE quarantine_rule_hits SET state = NEW.state WHERE id = NEW.id;
    UPDATE quarantine_domain_hits SET state = NEW.state WHERE id = NEW.id;
    RETURN NULL;
END $$;
CREATE TRIGGER quarantine_hits_added AFTER INSERT ON quarantine
    FOR EACH ROW EXECUTE FUNCTION mailgate_hits_added();
CREATE TRIGGER quarantine_hits_state AFTER UPDATE OF state ON quarantine
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION mailgate_hits_state();
INSERT INTO quarantine_rule_hits (rule, id, state, time)
    SELECT DISTINCT r, id, state, time FROM quarantine, unnest(rules || monitor) AS r;
INSERT INTO quarantine_domain_hits (domain, id, state, time)
    SELECT DISTINCT d, id, state, time FROM quarantine, unnest(domains) AS d
    WHERE d IS NOT NULL;
