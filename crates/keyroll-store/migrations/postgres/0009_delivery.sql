-- Delivery by agents (SPEC §10). Same tables and meaning as migrations/sqlite/0009_delivery.sql.

ALTER TABLE key_versions ADD COLUMN rotation_requested_ms BIGINT;

CREATE TABLE handovers (
    consumer_id  BIGINT NOT NULL REFERENCES consumers (id),
    version      BIGINT NOT NULL,
    from_version BIGINT NOT NULL,
    sealed       BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (consumer_id, from_version, version),
    CHECK (from_version < version)
);

CREATE TABLE agents (
    consumer_id  BIGINT NOT NULL REFERENCES consumers (id),
    agent_id     TEXT NOT NULL,
    host         TEXT,
    mode         TEXT,
    version      BIGINT NOT NULL,
    health       TEXT,
    detail       TEXT,
    first_seen   BIGINT NOT NULL,
    last_contact BIGINT NOT NULL,
    PRIMARY KEY (consumer_id, agent_id)
);

CREATE TABLE deliveries (
    consumer_id  BIGINT NOT NULL REFERENCES consumers (id),
    version      BIGINT NOT NULL,
    agent_id     TEXT NOT NULL,
    delivered_at BIGINT NOT NULL,
    PRIMARY KEY (consumer_id, version, agent_id)
);
