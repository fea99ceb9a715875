-- keyroll schema, version 2 (PostgreSQL): the same changes as migrations/sqlite/0002_usage.sql.
--
-- Conventions as in 0001_init.sql (times in unix milliseconds as BIGINT, no secrets, named
-- constraints), plus:
-- - Durations are whole milliseconds in a BIGINT column named `*_ms`.
-- - Databases made by 0001 already exist: every added column has a constant default, which is
--   what an existing row gets (the defaults are keyroll_core's `Policy::default()` and a version
--   that was never stalled nor reported unused).

ALTER TABLE consumers
    ADD COLUMN retire_policy TEXT NOT NULL DEFAULT 'when-idle'
        CONSTRAINT consumers_retire_policy_check CHECK (retire_policy IN ('when-idle', 'at-deadline')),
    -- How long a version must go unseen to count as idle.
    ADD COLUMN idle_ms BIGINT NOT NULL DEFAULT 3600000
        CONSTRAINT consumers_idle_ms_check CHECK (idle_ms >= 0),
    ADD COLUMN on_stall TEXT NOT NULL DEFAULT 'extend'
        CONSTRAINT consumers_on_stall_check CHECK (on_stall IN ('extend', 'retire'));

ALTER TABLE key_versions
    -- The grace window of the rotation that made the version retiring: a stall's one extension.
    ADD COLUMN grace_ms BIGINT NOT NULL DEFAULT 0
        CONSTRAINT key_versions_grace_ms_check CHECK (grace_ms >= 0),
    ADD COLUMN extended BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN unused_reported BOOLEAN NOT NULL DEFAULT false;

-- Usage is written in batches by the server (a flush every few seconds), never on the
-- verification hot path. Rows refer to a version by its kid, which is what the verifier knows;
-- a batch naming a kid that does not exist is skipped row by row, not refused.

-- When each version was last seen in allowed traffic.
CREATE TABLE version_usage (
    kid          TEXT   NOT NULL CONSTRAINT version_usage_pkey PRIMARY KEY
                        CONSTRAINT version_usage_kid_fkey REFERENCES key_versions (kid),
    last_used_at BIGINT NOT NULL
);

-- Allowed requests per version per hour; `hour` is the start of the hour.
CREATE TABLE usage_hourly (
    kid   TEXT   NOT NULL CONSTRAINT usage_hourly_kid_fkey REFERENCES key_versions (kid),
    hour  BIGINT NOT NULL,
    count BIGINT NOT NULL CHECK (count >= 0),
    CONSTRAINT usage_hourly_pkey PRIMARY KEY (kid, hour)
);

-- Who presented each version: the most recently seen few per version (the writer trims the
-- rest). No secrets: an address, a User-Agent and an optional X-Client-Id.
CREATE TABLE usage_sources (
    kid        TEXT   NOT NULL CONSTRAINT usage_sources_kid_fkey REFERENCES key_versions (kid),
    address    TEXT   NOT NULL,
    user_agent TEXT   NOT NULL,
    -- '' when the client sent none, so that the column can be part of the primary key.
    client_id  TEXT   NOT NULL DEFAULT '',
    first_seen BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    count      BIGINT NOT NULL CHECK (count >= 0),
    CONSTRAINT usage_sources_pkey PRIMARY KEY (kid, address, user_agent, client_id)
);

-- The outbox (SPEC §10): lifecycle events, appended in the transaction of the change they
-- describe; readers page through it by seq.
CREATE TABLE events (
    -- Identity values can have gaps (rolled-back transactions), and are handed out at insert,
    -- not at commit: a reader paging by seq must not move its cursor past a gap that a
    -- transaction still running may yet fill. (The store takes its append lock before taking a
    -- seq, so events commit in seq order.)
    seq      BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT events_pkey PRIMARY KEY,
    at       BIGINT NOT NULL,
    -- `version.issued`, `version.retired`, `rotation.stalled`, …
    kind     TEXT   NOT NULL,
    -- `ENV/NAME`.
    consumer TEXT   NOT NULL,
    version  BIGINT CHECK (version BETWEEN 1 AND 4294967295),
    -- JSON text made by the caller, never a secret.
    detail   TEXT   NOT NULL
);

-- The outbox is append-only (readers keep their own cursor); a later migration that adds
-- retention can drop this.
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only';
END;
$$;
CREATE TRIGGER events_no_update_or_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
