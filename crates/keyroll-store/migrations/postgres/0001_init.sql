-- keyroll schema, version 1 (PostgreSQL). The same tables as migrations/sqlite/0001_init.sql.
--
-- Conventions shared with the SQLite schema, so both backends convert rows the same way:
-- - Every time is unix milliseconds in a BIGINT column, exactly keyroll_core::Timestamp, not
--   TIMESTAMPTZ: one conversion path, no time zones, no driver-specific date types.
-- - No column holds a secret. Key versions and admin tokens keep only the SHA-256 digest of their
--   secret part (secret_hash); a key's fingerprint is a digest of the whole key, and its kid is
--   public. The conformance suite checks every cell of every table for a plaintext secret.
-- - Scopes are one TEXT column, space-separated and sorted: scope grammar has no whitespace.
-- - Constraints have explicit names: the store tells a kid collision from a reused
--   Idempotency-Key from a duplicate consumer by the name of the violated constraint.

CREATE TABLE environments (
    name       TEXT    NOT NULL CONSTRAINT environments_pkey PRIMARY KEY,
    protected  BOOLEAN NOT NULL,
    created_at BIGINT  NOT NULL
);

CREATE TABLE consumers (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY CONSTRAINT consumers_pkey PRIMARY KEY,
    environment TEXT    NOT NULL CONSTRAINT consumers_environment_fkey REFERENCES environments (name),
    name        TEXT    NOT NULL,
    scopes      TEXT    NOT NULL,
    owner       TEXT,
    disabled    BOOLEAN NOT NULL,
    -- The optimistic-concurrency token: every write is `... WHERE revision = <read revision>`.
    revision    BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    -- When the last audited change was written.
    updated_at  BIGINT  NOT NULL,
    CONSTRAINT consumers_environment_name_key UNIQUE (environment, name)
);

CREATE TABLE key_versions (
    consumer_id   BIGINT  NOT NULL CONSTRAINT key_versions_consumer_fkey REFERENCES consumers (id),
    version       BIGINT  NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
    -- Unique across the installation (SPEC §2): the verification index is keyed by it.
    kid           TEXT    NOT NULL CONSTRAINT key_versions_kid_key UNIQUE CHECK (length(kid) = 12),
    secret_hash   BYTEA   NOT NULL CHECK (octet_length(secret_hash) = 32),
    fingerprint   BYTEA   NOT NULL CHECK (octet_length(fingerprint) = 8),
    state         TEXT    NOT NULL CHECK (state IN ('active', 'retiring', 'retired', 'revoked')),
    created_at    BIGINT  NOT NULL,
    deadline      BIGINT,
    expires_at    BIGINT,
    retired_at    BIGINT,
    revoked_at    BIGINT,
    revoke_reason TEXT,
    replaced_by   BIGINT,
    enforced      BOOLEAN NOT NULL,
    CONSTRAINT key_versions_pkey PRIMARY KEY (consumer_id, version)
);

-- SPEC §3: a consumer has at most one active version. A unique index cannot be deferred, so
-- writers upsert demoted versions before the promoted one.
CREATE UNIQUE INDEX key_versions_one_active ON key_versions (consumer_id) WHERE state = 'active';

CREATE TABLE audit_log (
    -- Identity values can have gaps (rolled-back transactions); order is what matters.
    seq         BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT audit_log_pkey PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    target      TEXT   NOT NULL,
    -- JSON text made by the caller, never a secret.
    detail      TEXT   NOT NULL,
    request_id  TEXT,
    remote_addr TEXT
);

-- The audit log is append-only; a later migration that adds retention can drop this.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TABLE idempotency_keys (
    key          TEXT    NOT NULL CONSTRAINT idempotency_keys_pkey PRIMARY KEY,
    -- Hex SHA-256 of method, path and body.
    request_hash TEXT    NOT NULL,
    status       INTEGER NOT NULL CHECK (status BETWEEN 100 AND 999),
    -- The first answer, with plaintext keys stripped by the caller.
    response     TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL
);
-- For sweeping old records by age.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

CREATE TABLE admin_tokens (
    id          TEXT   NOT NULL CONSTRAINT admin_tokens_pkey PRIMARY KEY,
    secret_hash BYTEA  NOT NULL CHECK (octet_length(secret_hash) = 32),
    name        TEXT   NOT NULL,
    scopes      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);
