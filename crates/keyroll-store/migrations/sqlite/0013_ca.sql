-- keyroll schema, version 13 (SQLite): keyroll's own certificate authority (SPEC §9).
--
-- Conventions as in 0001_init.sql (times in unix milliseconds, STRICT tables). No column holds a
-- secret: a CA's private key is stored only sealed (AEAD) under the server's master key, which
-- the database does not hold.
--
-- - ca_authorities: every root and intermediate ever made, with its place on the rotation
--   timeline (enters_bundle_at, signs_from, removed_at) and the bundle version it entered with.
-- - ca_certificates: every issued leaf (never its key), with revocation.
-- - ca_revoked_identities: identities that may no longer renew themselves.
-- - ca_crls: the current CRL of each issuer.
-- - ca_handshakes: which trust anchor handshakes chained to, by identity and peer (the removal
--   gate's "no handshake for idle"), upserted from the servers' in-memory counts.
-- - ca_bundle: one row, the version of the trust bundle (grows with every bundle change).
-- - agents.bundle_version: the bundle an agent reports to have loaded (NULL: never said).
-- - changes.kind: `consumer` (consumer_id names it) or `ca` (every node rebuilds its trust store).

CREATE TABLE ca_authorities (
    id               TEXT    NOT NULL PRIMARY KEY,
    kind             TEXT    NOT NULL CHECK (kind IN ('root', 'intermediate')),
    generation       INTEGER NOT NULL CHECK (generation >= 1),
    parent_id        TEXT REFERENCES ca_authorities (id),
    trust_domain     TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    cert_der         BLOB    NOT NULL,
    sealed_key       BLOB    NOT NULL,
    serial           TEXT    NOT NULL UNIQUE,
    fingerprint      TEXT    NOT NULL,
    not_before       INTEGER NOT NULL,
    not_after        INTEGER NOT NULL,
    enters_bundle_at INTEGER NOT NULL,
    signs_from       INTEGER NOT NULL,
    idle_ms          INTEGER NOT NULL CHECK (idle_ms >= 0),
    entered_version  INTEGER,
    removed_at       INTEGER,
    state            TEXT    NOT NULL CHECK (state IN ('next', 'bundled', 'active', 'retiring', 'removed')),
    created_at       INTEGER NOT NULL,
    CHECK ((kind = 'root') = (parent_id IS NULL))
) STRICT;

CREATE TABLE ca_certificates (
    serial            TEXT    NOT NULL PRIMARY KEY,
    environment       TEXT    NOT NULL,
    service           TEXT    NOT NULL,
    issuer_id         TEXT    NOT NULL REFERENCES ca_authorities (id),
    not_before        INTEGER NOT NULL,
    not_after         INTEGER NOT NULL,
    issued_at         INTEGER NOT NULL,
    fingerprint       TEXT    NOT NULL,
    server_auth       INTEGER NOT NULL CHECK (server_auth IN (0, 1)),
    requested_by      TEXT    NOT NULL,
    superseded_by     TEXT,
    revoked_at        INTEGER,
    revocation_reason TEXT,
    CHECK ((revoked_at IS NULL) = (revocation_reason IS NULL))
) STRICT;
CREATE INDEX ca_certificates_identity ON ca_certificates (environment, service);
-- The removal gate and the CRLs ask per issuer.
CREATE INDEX ca_certificates_issuer ON ca_certificates (issuer_id, not_after);

CREATE TABLE ca_revoked_identities (
    environment TEXT    NOT NULL,
    service     TEXT    NOT NULL,
    revoked_at  INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    revoked_by  TEXT    NOT NULL,
    PRIMARY KEY (environment, service)
) STRICT;

CREATE TABLE ca_crls (
    issuer_id   TEXT    NOT NULL PRIMARY KEY REFERENCES ca_authorities (id),
    number      INTEGER NOT NULL CHECK (number >= 1),
    this_update INTEGER NOT NULL,
    next_update INTEGER NOT NULL,
    der         BLOB    NOT NULL
) STRICT;

CREATE TABLE ca_handshakes (
    anchor_id TEXT    NOT NULL,
    identity  TEXT    NOT NULL,
    -- The peer's address without its port ('' when unknown): one row per client, not per
    -- connection.
    peer      TEXT    NOT NULL,
    serial    TEXT    NOT NULL,
    last_at   INTEGER NOT NULL,
    count     INTEGER NOT NULL CHECK (count >= 0),
    PRIMARY KEY (anchor_id, identity, peer)
) STRICT;
CREATE INDEX ca_handshakes_last_at ON ca_handshakes (last_at);

CREATE TABLE ca_bundle (
    id      INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL CHECK (version >= 0)
) STRICT;
INSERT INTO ca_bundle (id, version) VALUES (1, 0);

ALTER TABLE agents ADD COLUMN bundle_version INTEGER;

ALTER TABLE changes ADD COLUMN kind TEXT NOT NULL DEFAULT 'consumer' CHECK (kind IN ('consumer', 'ca'));
