-- keyroll schema, version 2 (SQLite): usage-gated retirement, usage facts and the event outbox.
--
-- Conventions as in 0001_init.sql (times in unix milliseconds, no secrets, STRICT tables), plus:
-- - Durations are whole milliseconds in an INTEGER column named `*_ms`.
-- - Booleans are INTEGER 0/1 with a CHECK, as in 0001.
-- - Databases made by 0001 already exist: every added column has a constant default, which is
--   what an existing row gets (the defaults are keyroll_core's `Policy::default()` and a version
--   that was never stalled nor reported unused). ADD COLUMN checks the CHECKs against those rows.

ALTER TABLE consumers ADD COLUMN retire_policy TEXT NOT NULL DEFAULT 'when-idle'
    CHECK (retire_policy IN ('when-idle', 'at-deadline'));
-- How long a version must go unseen to count as idle.
ALTER TABLE consumers ADD COLUMN idle_ms INTEGER NOT NULL DEFAULT 3600000 CHECK (idle_ms >= 0);
ALTER TABLE consumers ADD COLUMN on_stall TEXT NOT NULL DEFAULT 'extend'
    CHECK (on_stall IN ('extend', 'retire'));

-- The grace window of the rotation that made the version retiring: a stall's one extension.
ALTER TABLE key_versions ADD COLUMN grace_ms INTEGER NOT NULL DEFAULT 0 CHECK (grace_ms >= 0);
ALTER TABLE key_versions ADD COLUMN extended INTEGER NOT NULL DEFAULT 0 CHECK (extended IN (0, 1));
ALTER TABLE key_versions ADD COLUMN unused_reported INTEGER NOT NULL DEFAULT 0
    CHECK (unused_reported IN (0, 1));

-- Usage is written in batches by the server (a flush every few seconds), never on the
-- verification hot path. Rows refer to a version by its kid, which is what the verifier knows;
-- a batch naming a kid that does not exist is skipped row by row, not refused.

-- When each version was last seen in allowed traffic: `when-idle` and stall detection decide
-- from it, and the server seeds its index from it at start.
CREATE TABLE version_usage (
    kid          TEXT    NOT NULL PRIMARY KEY REFERENCES key_versions (kid),
    last_used_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Allowed requests per version per hour; `hour` is the start of the hour.
CREATE TABLE usage_hourly (
    kid   TEXT    NOT NULL REFERENCES key_versions (kid),
    hour  INTEGER NOT NULL,
    count INTEGER NOT NULL CHECK (count >= 0),
    PRIMARY KEY (kid, hour)
) STRICT, WITHOUT ROWID;

-- Who presented each version: the most recently seen few per version (the writer trims the
-- rest). No secrets: an address, a User-Agent and an optional X-Client-Id.
CREATE TABLE usage_sources (
    kid        TEXT    NOT NULL REFERENCES key_versions (kid),
    address    TEXT    NOT NULL,
    user_agent TEXT    NOT NULL,
    -- '' when the client sent none, so that the column can be part of the primary key.
    client_id  TEXT    NOT NULL DEFAULT '',
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    count      INTEGER NOT NULL CHECK (count >= 0),
    PRIMARY KEY (kid, address, user_agent, client_id)
) STRICT, WITHOUT ROWID;

-- The outbox (SPEC §10): lifecycle events, appended in the transaction of the change they
-- describe; readers page through it by seq.
CREATE TABLE events (
    -- AUTOINCREMENT: positions are never reused, so a reader's "after seq" cursor stays valid.
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    -- `version.issued`, `version.retired`, `rotation.stalled`, …
    kind     TEXT    NOT NULL,
    -- `ENV/NAME`.
    consumer TEXT    NOT NULL,
    version  INTEGER CHECK (version BETWEEN 1 AND 4294967295),
    -- JSON text made by the caller, never a secret.
    detail   TEXT    NOT NULL
) STRICT;

-- The outbox is append-only (readers keep their own cursor); a later migration that adds
-- retention can drop these.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is append-only');
END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is append-only');
END;
