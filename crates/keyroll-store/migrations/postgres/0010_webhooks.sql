-- keyroll schema, version 10 (PostgreSQL): the same tables as migrations/sqlite/0010_webhooks.sql
-- (signed webhooks, SPEC §10).
--
-- Conventions as in 0001_init.sql (times in unix milliseconds as BIGINT, named constraints, no
-- secrets: the signing secret is stored only sealed under the server's master key). The
-- append-only `events` table stays untouched; delivery state lives here.

CREATE TABLE webhook_endpoints (
    id                     TEXT   NOT NULL CONSTRAINT webhook_endpoints_pkey PRIMARY KEY,
    url                    TEXT   NOT NULL,
    -- A JSON list of event types, or ["*"].
    events                 TEXT   NOT NULL,
    description            TEXT,
    sealed_secret          BYTEA  NOT NULL,
    sealed_previous_secret BYTEA,
    previous_secret_until  BIGINT,
    created_at             BIGINT NOT NULL,
    disabled_at            BIGINT,
    disabled_reason        TEXT,
    CONSTRAINT webhook_endpoints_previous_check
        CHECK ((previous_secret_until IS NULL) = (sealed_previous_secret IS NULL)),
    CONSTRAINT webhook_endpoints_disabled_check
        CHECK (disabled_reason IS NULL OR disabled_at IS NOT NULL)
);

CREATE TABLE webhook_deliveries (
    id              TEXT    NOT NULL CONSTRAINT webhook_deliveries_pkey PRIMARY KEY,
    endpoint_id     TEXT    NOT NULL CONSTRAINT webhook_deliveries_endpoint_fkey
        REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_seq       BIGINT  NOT NULL,
    msg_id          TEXT    NOT NULL,
    state           TEXT    NOT NULL CONSTRAINT webhook_deliveries_state_check
        CHECK (state IN ('pending', 'delivered', 'failed', 'disabled')),
    attempts        INTEGER NOT NULL CHECK (attempts >= 0),
    next_attempt_at BIGINT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      BIGINT  NOT NULL,
    delivered_at    BIGINT,
    CONSTRAINT webhook_deliveries_endpoint_event_key UNIQUE (endpoint_id, event_seq)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';

CREATE TABLE webhook_attempts (
    delivery_id    TEXT    NOT NULL CONSTRAINT webhook_attempts_delivery_fkey
        REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    n              INTEGER NOT NULL CHECK (n >= 1),
    at             BIGINT  NOT NULL,
    status         INTEGER,
    duration_ms    BIGINT  NOT NULL CHECK (duration_ms >= 0),
    error          TEXT,
    retry_after_ms BIGINT,
    CONSTRAINT webhook_attempts_pkey PRIMARY KEY (delivery_id, n)
);

CREATE TABLE webhook_cursor (
    id       INTEGER NOT NULL CONSTRAINT webhook_cursor_pkey PRIMARY KEY CHECK (id = 1),
    last_seq BIGINT  NOT NULL
);
INSERT INTO webhook_cursor (id, last_seq) VALUES (1, COALESCE((SELECT max(seq) FROM events), 0));
