-- Pivot control plane: initial schema. Migrations are forward-only.

-- A service is one Sentinel-managed master/replica group, named by its Sentinel master name.
CREATE TABLE services (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    -- JSON array of "host:port" strings: the configured Sentinels.
    sentinels   TEXT    NOT NULL,
    -- JSON routing policy; NULL means the default (replicas, read-your-writes, no rules).
    policy      TEXT,
    created_at  INTEGER NOT NULL, -- unix milliseconds
    updated_at  INTEGER NOT NULL  -- unix milliseconds
);

-- Every topology change the control plane accepted, with the config version it produced.
CREATE TABLE topology_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    service     TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    -- initial | master-changed | replicas-changed | replica-health | sentinels-changed
    kind        TEXT    NOT NULL,
    old_master  TEXT,
    new_master  TEXT,
    reason      TEXT    NOT NULL,
    details     TEXT    NOT NULL DEFAULT '{}', -- JSON
    at          INTEGER NOT NULL  -- unix milliseconds
);
CREATE INDEX topology_events_service_id ON topology_events (service, id);
CREATE INDEX topology_events_version ON topology_events (version);

-- Proxies that opened a config stream, and the version each one runs.
CREATE TABLE proxies (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    proxy_id       TEXT    NOT NULL UNIQUE,
    listen_addr    TEXT    NOT NULL,
    build_version  TEXT    NOT NULL,
    services       TEXT    NOT NULL, -- JSON array of service names
    acked_version  INTEGER,
    last_nack      TEXT,
    last_seen      INTEGER NOT NULL  -- unix milliseconds
);

-- Small key/value facts about the control plane itself. `version_reserved` is the highest
-- config version this control plane may have handed out (see store.rs: versions are
-- reserved in blocks so that they keep increasing across restarts).
CREATE TABLE meta (
    key    TEXT PRIMARY KEY NOT NULL,
    value  INTEGER NOT NULL
);
