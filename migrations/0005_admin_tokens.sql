-- Bearer tokens of the admin REST API (docs/api.md). Only the SHA-256 of a token (hex) is
-- kept: the token itself is shown once, in the response that creates it (or printed once
-- at the first start). Looked up by that hash on every uncached request.
CREATE TABLE admin_tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'viewer')),
    token_sha256  TEXT    NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL, -- unix milliseconds
    -- `token:<name>` of the token that created it, or `bootstrap` / `PIVOT_ADMIN_TOKEN`.
    created_by    TEXT    NOT NULL,
    -- Updated at most once a minute per token; NULL: never used.
    last_used_at  INTEGER           -- unix milliseconds
);
