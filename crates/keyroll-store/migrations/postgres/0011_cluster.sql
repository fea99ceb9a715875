-- keyroll schema, version 11 (PostgreSQL): the same tables as migrations/sqlite/0011_cluster.sql
-- (several nodes on one database, SPEC §11).
--
-- Conventions as in 0001_init.sql (times in unix milliseconds as BIGINT, named constraints, no
-- secrets).
--
-- Why a counter row rather than a sequence or an identity column: sequence values are handed
-- out at nextval, not at commit, and a rolled-back transaction leaves a gap, so a reader paging
-- by seq could skip a change that a slower transaction commits later. Every create_consumer and
-- write_consumer transaction runs `UPDATE change_counter SET seq = seq + 1 ... RETURNING seq`:
-- the row lock serialises writers of consumers until they commit, so seqs commit in order and
-- have no gaps (a rolled-back transaction rolls its increment back too). The same transaction
-- runs `pg_notify('keyroll_changes', seq::text)`, delivered at commit and never on rollback.

ALTER TABLE consumers
    ADD COLUMN change_seq BIGINT NOT NULL DEFAULT 0
        CONSTRAINT consumers_change_seq_check CHECK (change_seq >= 0);

CREATE TABLE change_counter (
    id  INTEGER NOT NULL CONSTRAINT change_counter_pkey PRIMARY KEY
        CONSTRAINT change_counter_id_check CHECK (id = 1),
    seq BIGINT  NOT NULL CONSTRAINT change_counter_seq_check CHECK (seq >= 0)
);
INSERT INTO change_counter (id, seq) VALUES (1, 0);

CREATE TABLE changes (
    seq         BIGINT NOT NULL CONSTRAINT changes_pkey PRIMARY KEY,
    -- Not a foreign key: the log must not stop a consumer from being deleted one day.
    consumer_id BIGINT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX changes_at ON changes (at);

CREATE TABLE nodes (
    node_id          TEXT    NOT NULL CONSTRAINT nodes_pkey PRIMARY KEY,
    address          TEXT,
    version          TEXT    NOT NULL,
    started_at       BIGINT  NOT NULL,
    heartbeat_at     BIGINT  NOT NULL,
    applied_seq      BIGINT  NOT NULL,
    usage_flushed_at BIGINT,
    leader           BOOLEAN NOT NULL DEFAULT false
);

CREATE TABLE leases (
    name        TEXT   NOT NULL CONSTRAINT leases_pkey PRIMARY KEY,
    holder      TEXT   NOT NULL,
    -- Grows by one with every new tenure (another holder, or the same one after its lease
    -- lapsed): a fencing number for logs.
    term        BIGINT NOT NULL CONSTRAINT leases_term_check CHECK (term >= 1),
    acquired_at BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

-- The adoption merge asks every few seconds which versions were used since its last merge.
CREATE INDEX version_usage_last_used_at ON version_usage (last_used_at);
