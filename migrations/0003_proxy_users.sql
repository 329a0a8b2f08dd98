-- Users clients authenticate to the proxies as, per service. Only a salted SHA-256 of the
-- password is kept (see ProxyUser in pivot.proto); never returned by an API.
CREATE TABLE proxy_users (
    service     TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    salt        BLOB    NOT NULL,
    hash        BLOB    NOT NULL,
    created_at  INTEGER NOT NULL, -- unix milliseconds
    updated_at  INTEGER NOT NULL, -- unix milliseconds
    PRIMARY KEY (service, name)
);
