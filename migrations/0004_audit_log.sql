-- Every change made to what operators configure (services, policies, rules, users, admin
-- tokens, manual failovers): who, what, when, and the state before and after. Secrets are
-- replaced by "<redacted>" before a row is written. Append-only.
CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,  -- unix milliseconds
    -- Who: `token:<name>` for API calls, `config` for start-up flags.
    actor    TEXT    NOT NULL,
    -- What: `service.create`, `policy.set`, `rule.put`, `user.delete`, `failover`, ...
    action   TEXT    NOT NULL,
    service  TEXT,
    -- The object acted on within the service (rule command, user name, token name).
    target   TEXT    NOT NULL DEFAULT '',
    before   TEXT    NOT NULL DEFAULT 'null', -- JSON
    after    TEXT    NOT NULL DEFAULT 'null'  -- JSON
);
CREATE INDEX audit_log_service_id ON audit_log (service, id);
CREATE INDEX audit_log_actor_id ON audit_log (actor, id);
CREATE INDEX topology_events_kind_id ON topology_events (kind, id);
