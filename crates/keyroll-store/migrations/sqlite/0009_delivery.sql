-- Delivery by agents (SPEC §10).
--
-- - key_versions.rotation_requested_ms: while active, an operator asked the consumer's agents to
--   rotate it (`keyroll rotate ENV/NAME --via-agent`), since then.
-- - handovers: a version issued to one agent, sealed (AEAD) under a key derived from the secret
--   of the version that agent presented, so every other holder of that older version (replicas
--   of the same app, or the same agent after a crash) can fetch it, and nobody else: the database
--   holds only the hash of the older secret, from which the sealing key cannot be derived. Rows
--   whose older version is no longer valid are deleted in the same write that retires it.
-- - agents: each agent's last report (heartbeat) and the version it holds.
-- - deliveries: the first report of a version by an agent, i.e. the moment it had written it.

ALTER TABLE key_versions ADD COLUMN rotation_requested_ms INTEGER;

CREATE TABLE handovers (
    consumer_id  INTEGER NOT NULL REFERENCES consumers (id),
    version      INTEGER NOT NULL,
    from_version INTEGER NOT NULL,
    sealed       BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (consumer_id, from_version, version),
    CHECK (from_version < version)
);

CREATE TABLE agents (
    consumer_id  INTEGER NOT NULL REFERENCES consumers (id),
    agent_id     TEXT NOT NULL,
    host         TEXT,
    mode         TEXT,
    version      INTEGER NOT NULL,
    health       TEXT,
    detail       TEXT,
    first_seen   INTEGER NOT NULL,
    last_contact INTEGER NOT NULL,
    PRIMARY KEY (consumer_id, agent_id)
);

CREATE TABLE deliveries (
    consumer_id  INTEGER NOT NULL REFERENCES consumers (id),
    version      INTEGER NOT NULL,
    agent_id     TEXT NOT NULL,
    delivered_at INTEGER NOT NULL,
    PRIMARY KEY (consumer_id, version, agent_id)
);
