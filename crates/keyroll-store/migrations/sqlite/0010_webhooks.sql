-- keyroll schema, version 10 (SQLite): signed webhooks (SPEC §10). 0009 belongs to the agent's
-- delivery work.
--
-- Conventions as in 0001_init.sql (times in unix milliseconds, STRICT tables, no secrets):
-- an endpoint's signing secret is stored only sealed (ChaCha20-Poly1305 under the server's
-- master key, which the database does not hold; the endpoint id is the associated data).
-- Delivery state lives here, apart from the append-only `events` table, which stays untouched:
-- the sender reads events after `webhook_cursor.last_seq` and enqueues deliveries.

CREATE TABLE webhook_endpoints (
    -- `wh_` + 16 base62 characters.
    id                     TEXT    NOT NULL PRIMARY KEY,
    url                    TEXT    NOT NULL,
    -- A JSON list of event types, or ["*"].
    events                 TEXT    NOT NULL,
    description            TEXT,
    -- nonce || ciphertext of the secret's bytes.
    sealed_secret          BLOB    NOT NULL,
    -- The secret before the last rotation, which still signs until previous_secret_until.
    sealed_previous_secret BLOB,
    previous_secret_until  INTEGER CHECK ((previous_secret_until IS NULL) = (sealed_previous_secret IS NULL)),
    created_at             INTEGER NOT NULL,
    disabled_at            INTEGER,
    disabled_reason        TEXT    CHECK (disabled_reason IS NULL OR disabled_at IS NOT NULL)
) STRICT;

CREATE TABLE webhook_deliveries (
    -- `whd_` + 16 base62 characters.
    id              TEXT    NOT NULL PRIMARY KEY,
    endpoint_id     TEXT    NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    -- The event delivered (events.seq; not a foreign key: the outbox may be pruned one day).
    event_seq       INTEGER NOT NULL,
    -- webhook-id: `msg_<event seq>`, the same for every attempt and replay.
    msg_id          TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'disabled')),
    attempts        INTEGER NOT NULL CHECK (attempts >= 0),
    next_attempt_at INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    UNIQUE (endpoint_id, event_seq)
) STRICT;
-- The sender's question every tick: what is pending and due.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';

CREATE TABLE webhook_attempts (
    delivery_id    TEXT    NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    n              INTEGER NOT NULL CHECK (n >= 1),
    at             INTEGER NOT NULL,
    -- NULL: no answer (refused, timed out, blocked by the address filter).
    status         INTEGER,
    duration_ms    INTEGER NOT NULL CHECK (duration_ms >= 0),
    error          TEXT,
    retry_after_ms INTEGER,
    PRIMARY KEY (delivery_id, n)
) STRICT;

-- The last event seq the sender enqueued deliveries for: one row.
CREATE TABLE webhook_cursor (
    id       INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL
) STRICT;
-- Endpoints receive events from their registration on, not the whole history: the cursor starts
-- at the outbox's end when this migration runs.
INSERT INTO webhook_cursor (id, last_seq) VALUES (1, COALESCE((SELECT max(seq) FROM events), 0));
