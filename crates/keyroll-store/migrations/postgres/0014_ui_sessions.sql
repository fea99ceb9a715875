-- keyroll schema (PostgreSQL): dashboard sessions, shared by every node on the database, so a
-- browser can be served by any node and a logout ends the session everywhere at once. The
-- database keeps only SHA-256 of the session id (an HttpOnly cookie) and of its CSRF token. A
-- session acts as the token it was made from; the server re-checks that token on every request,
-- so a revoked or expired token ends its sessions. Times are unix milliseconds. 0013 belongs to
-- the certificate authority.
CREATE TABLE ui_sessions (
    id_hash      BYTEA  NOT NULL PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    token_id     TEXT   NOT NULL REFERENCES admin_tokens (id),
    csrf_hash    BYTEA  NOT NULL CHECK (octet_length(csrf_hash) = 32),
    created_at   BIGINT NOT NULL,
    -- The absolute end: no activity keeps a session past it.
    expires_at   BIGINT NOT NULL CHECK (expires_at > created_at),
    -- The last request, for the idle limit (written at most once a minute per session).
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX ui_sessions_expires ON ui_sessions (expires_at);
