-- keyroll schema, version 13 (PostgreSQL): the same tables as migrations/sqlite/0013_ca.sql
-- (keyroll's own certificate authority, SPEC §9). No column holds a secret: a CA's private key is
-- stored only sealed (AEAD) under the server's master key, which the database does not hold.

CREATE TABLE ca_authorities (
    id               TEXT    NOT NULL CONSTRAINT ca_authorities_pkey PRIMARY KEY,
    kind             TEXT    NOT NULL CONSTRAINT ca_authorities_kind_check CHECK (kind IN ('root', 'intermediate')),
    generation       BIGINT  NOT NULL CONSTRAINT ca_authorities_generation_check CHECK (generation >= 1),
    parent_id        TEXT REFERENCES ca_authorities (id),
    trust_domain     TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    cert_der         BYTEA   NOT NULL,
    sealed_key       BYTEA   NOT NULL,
    serial           TEXT    NOT NULL CONSTRAINT ca_authorities_serial_key UNIQUE,
    fingerprint      TEXT    NOT NULL,
    not_before       BIGINT  NOT NULL,
    not_after        BIGINT  NOT NULL,
    enters_bundle_at BIGINT  NOT NULL,
    signs_from       BIGINT  NOT NULL,
    idle_ms          BIGINT  NOT NULL CONSTRAINT ca_authorities_idle_check CHECK (idle_ms >= 0),
    entered_version  BIGINT,
    removed_at       BIGINT,
    state            TEXT    NOT NULL CONSTRAINT ca_authorities_state_check
        CHECK (state IN ('next', 'bundled', 'active', 'retiring', 'removed')),
    created_at       BIGINT  NOT NULL,
    CONSTRAINT ca_authorities_parent_check CHECK ((kind = 'root') = (parent_id IS NULL))
);

CREATE TABLE ca_certificates (
    serial            TEXT    NOT NULL CONSTRAINT ca_certificates_pkey PRIMARY KEY,
    environment       TEXT    NOT NULL,
    service           TEXT    NOT NULL,
    issuer_id         TEXT    NOT NULL REFERENCES ca_authorities (id),
    not_before        BIGINT  NOT NULL,
    not_after         BIGINT  NOT NULL,
    issued_at         BIGINT  NOT NULL,
    fingerprint       TEXT    NOT NULL,
    server_auth       BOOLEAN NOT NULL,
    requested_by      TEXT    NOT NULL,
    superseded_by     TEXT,
    revoked_at        BIGINT,
    revocation_reason TEXT,
    CONSTRAINT ca_certificates_revoked_check CHECK ((revoked_at IS NULL) = (revocation_reason IS NULL))
);
CREATE INDEX ca_certificates_identity ON ca_certificates (environment, service);
CREATE INDEX ca_certificates_issuer ON ca_certificates (issuer_id, not_after);

CREATE TABLE ca_revoked_identities (
    environment TEXT   NOT NULL,
    service     TEXT   NOT NULL,
    revoked_at  BIGINT NOT NULL,
    reason      TEXT   NOT NULL,
    revoked_by  TEXT   NOT NULL,
    CONSTRAINT ca_revoked_identities_pkey PRIMARY KEY (environment, service)
);

CREATE TABLE ca_crls (
    issuer_id   TEXT   NOT NULL CONSTRAINT ca_crls_pkey PRIMARY KEY REFERENCES ca_authorities (id),
    number      BIGINT NOT NULL CONSTRAINT ca_crls_number_check CHECK (number >= 1),
    this_update BIGINT NOT NULL,
    next_update BIGINT NOT NULL,
    der         BYTEA  NOT NULL
);

CREATE TABLE ca_handshakes (
    anchor_id TEXT   NOT NULL,
    identity  TEXT   NOT NULL,
    peer      TEXT   NOT NULL,
    serial    TEXT   NOT NULL,
    last_at   BIGINT NOT NULL,
    count     BIGINT NOT NULL CONSTRAINT ca_handshakes_count_check CHECK (count >= 0),
    CONSTRAINT ca_handshakes_pkey PRIMARY KEY (anchor_id, identity, peer)
);
CREATE INDEX ca_handshakes_last_at ON ca_handshakes (last_at);

CREATE TABLE ca_bundle (
    id      INTEGER NOT NULL CONSTRAINT ca_bundle_pkey PRIMARY KEY CONSTRAINT ca_bundle_id_check CHECK (id = 1),
    version BIGINT  NOT NULL CONSTRAINT ca_bundle_version_check CHECK (version >= 0)
);
INSERT INTO ca_bundle (id, version) VALUES (1, 0);

ALTER TABLE agents ADD COLUMN bundle_version BIGINT;

ALTER TABLE changes ADD COLUMN kind TEXT NOT NULL DEFAULT 'consumer'
    CONSTRAINT changes_kind_check CHECK (kind IN ('consumer', 'ca'));
