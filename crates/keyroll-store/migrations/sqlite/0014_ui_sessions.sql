-- keyroll schema (SQLite): dashboard sessions. A browser that logged in with an admin token
-- holds a random session id in an HttpOnly cookie; the database keeps only SHA-256 of it and of
-- the session's CSRF token, so a copy of the database opens no session. A session acts as the
-- token it was made from (same scopes); the server re-checks that token on every request, so a
-- revoked or expired token ends its sessions. Times are unix milliseconds. 0013 belongs to the
-- certificate authority.
CREATE TABLE ui_sessions (
    id_hash      BLOB    NOT NULL PRIMARY KEY CHECK (length(id_hash) = 32),
    token_id     TEXT    NOT NULL REFERENCES admin_tokens (id),
    csrf_hash    BLOB    NOT NULL CHECK (length(csrf_hash) = 32),
    created_at   INTEGER NOT NULL,
    -- The absolute end: no activity keeps a session past it.
    expires_at   INTEGER NOT NULL CHECK (expires_at > created_at),
    -- The last request, for the idle limit (written at most once a minute per session).
    last_seen_at INTEGER NOT NULL
) STRICT;
CREATE INDEX ui_sessions_expires ON ui_sessions (expires_at);
