-- keyroll schema, version 11 (SQLite): several nodes on one database (SPEC §11). On SQLite there
-- is normally one node, but the tables are the same on both backends so that the server has one
-- code path: it applies the change log, heartbeats and holds the leader lease either way.
--
-- Conventions as in 0001_init.sql (times in unix milliseconds, STRICT tables, no secrets).
--
-- - consumers.change_seq: the seq of the consumer's last committed change (0 for rows written
--   before this migration: a node loads them at start and never needs their change).
-- - change_counter: one row, the seq of the last committed change. Every create_consumer and
--   write_consumer transaction increments it and appends its `changes` row, so seqs commit in
--   order with no gaps (SQLite has one writer at a time; a rolled-back transaction rolls its
--   increment back too).
-- - changes: the append-only log other nodes apply from `changes_since(applied)`; pruned by age
--   (the counter keeps the head, so a node that fell behind a prune reloads everything).
-- - nodes: each node's last heartbeat (what it has applied, whether it leads).
-- - leases: named leases (the leader lock), taken and renewed by one conditional upsert.

ALTER TABLE consumers ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0 CHECK (change_seq >= 0);

CREATE TABLE change_counter (
    id  INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL CHECK (seq >= 0)
) STRICT;
INSERT INTO change_counter (id, seq) VALUES (1, 0);

CREATE TABLE changes (
    seq         INTEGER NOT NULL PRIMARY KEY,
    -- Not a foreign key: consumers are never deleted today, but the log must not stop them being.
    consumer_id INTEGER NOT NULL,
    at          INTEGER NOT NULL
) STRICT;
-- prune_changes deletes by age.
CREATE INDEX changes_at ON changes (at);

CREATE TABLE nodes (
    node_id          TEXT    NOT NULL PRIMARY KEY,
    address          TEXT,
    version          TEXT    NOT NULL,
    started_at       INTEGER NOT NULL,
    heartbeat_at     INTEGER NOT NULL,
    applied_seq      INTEGER NOT NULL,
    usage_flushed_at INTEGER,
    leader           INTEGER NOT NULL DEFAULT 0 CHECK (leader IN (0, 1))
) STRICT;

CREATE TABLE leases (
    name        TEXT    NOT NULL PRIMARY KEY,
    holder      TEXT    NOT NULL,
    -- Grows by one with every new tenure (another holder, or the same one after its lease
    -- lapsed): a fencing number for logs.
    term        INTEGER NOT NULL CHECK (term >= 1),
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;

-- The adoption merge asks every few seconds which versions were used since its last merge.
CREATE INDEX version_usage_last_used_at ON version_usage (last_used_at);
