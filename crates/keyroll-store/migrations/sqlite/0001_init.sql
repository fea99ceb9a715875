-- keyroll schema, version 1 (SQLite).
--
-- Conventions shared with migrations/postgres/0001_init.sql, so both backends convert rows the
-- same way:
-- - Every time is unix milliseconds in an INTEGER column, exactly keyroll_core::Timestamp: one
--   conversion path, no time zones, no driver-specific date types.
-- - No column holds a secret. Key versions and admin tokens keep only the SHA-256 digest of their
--   secret part (secret_hash); a key's fingerprint is a digest of the whole key, and its kid is
--   public. The conformance suite checks every cell of every table for a plaintext secret.
-- - Scopes are one TEXT column, space-separated and sorted: scope grammar has no whitespace.
-- - STRICT tables: SQLite refuses a value of the wrong type instead of storing it anyway, so
--   what is read back is what keyroll wrote (or a manual edit that the reader reports as corrupt).

CREATE TABLE environments (
    name       TEXT    NOT NULL PRIMARY KEY,
    protected  INTEGER NOT NULL CHECK (protected IN (0, 1)),
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE consumers (
    -- AUTOINCREMENT: an id is never handed out twice, even if consumers are deleted one day.
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    environment TEXT    NOT NULL REFERENCES environments (name),
    name        TEXT    NOT NULL,
    scopes      TEXT    NOT NULL,
    owner       TEXT,
    disabled    INTEGER NOT NULL CHECK (disabled IN (0, 1)),
    -- The optimistic-concurrency token: every write is `... WHERE revision = <read revision>`.
    revision    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    -- When the last audited change was written.
    updated_at  INTEGER NOT NULL,
    UNIQUE (environment, name)
) STRICT;

CREATE TABLE key_versions (
    consumer_id   INTEGER NOT NULL REFERENCES consumers (id),
    version       INTEGER NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
    -- Unique across the installation (SPEC §2): the verification index is keyed by it.
    kid           TEXT    NOT NULL UNIQUE CHECK (length(kid) = 12),
    secret_hash   BLOB    NOT NULL CHECK (length(secret_hash) = 32),
    fingerprint   BLOB    NOT NULL CHECK (length(fingerprint) = 8),
    state         TEXT    NOT NULL CHECK (state IN ('active', 'retiring', 'retired', 'revoked')),
    created_at    INTEGER NOT NULL,
    deadline      INTEGER,
    expires_at    INTEGER,
    retired_at    INTEGER,
    revoked_at    INTEGER,
    revoke_reason TEXT,
    replaced_by   INTEGER,
    enforced      INTEGER NOT NULL CHECK (enforced IN (0, 1)),
    PRIMARY KEY (consumer_id, version)
) STRICT, WITHOUT ROWID;
-- WITHOUT ROWID clusters the rows by (consumer_id, version), which is the order load_all reads a
-- million of them in: a sequential scan instead of an index walk with a lookup per row.

-- SPEC §3: a consumer has at most one active version. Writers upsert demoted versions before the
-- promoted one, so this holds after every statement, not only at commit.
CREATE UNIQUE INDEX key_versions_one_active ON key_versions (consumer_id) WHERE state = 'active';

CREATE TABLE audit_log (
    -- AUTOINCREMENT: positions are never reused, so a position names one entry forever.
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    -- JSON text made by the caller, never a secret.
    detail      TEXT    NOT NULL,
    request_id  TEXT,
    remote_addr TEXT
) STRICT;

-- The audit log is append-only; a later migration that adds retention can drop these.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TABLE idempotency_keys (
    key          TEXT    NOT NULL PRIMARY KEY,
    -- Hex SHA-256 of method, path and body.
    request_hash TEXT    NOT NULL,
    status       INTEGER NOT NULL CHECK (status BETWEEN 100 AND 999),
    -- The first answer, with plaintext keys stripped by the caller.
    response     TEXT    NOT NULL,
    created_at   INTEGER NOT NULL
) STRICT;
-- For sweeping old records by age.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

CREATE TABLE admin_tokens (
    id          TEXT    NOT NULL PRIMARY KEY,
    secret_hash BLOB    NOT NULL CHECK (length(secret_hash) = 32),
    name        TEXT    NOT NULL,
    scopes      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
