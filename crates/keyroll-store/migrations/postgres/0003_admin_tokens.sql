-- keyroll schema, version 3 (PostgreSQL): the same changes as migrations/sqlite/0003_admin_tokens.sql.
--
-- Conventions as in 0001_init.sql (times in unix milliseconds as BIGINT, no secrets, named
-- constraints). Tokens made before this version get NULL everywhere: they never expire, are not
-- revoked and were not replaced, which is what they were.

ALTER TABLE admin_tokens
    -- When the token stops working by itself (`--expires-in`); NULL = never.
    ADD COLUMN expires_at BIGINT,
    -- When and why it was revoked; a reason only with a time.
    ADD COLUMN revoked_at BIGINT,
    ADD COLUMN revoke_reason TEXT,
    -- The token that replaced it in a rotation, and the end of the overlap during which both work.
    ADD COLUMN replaced_by TEXT
        CONSTRAINT admin_tokens_replaced_by_fkey REFERENCES admin_tokens (id),
    ADD COLUMN retires_at BIGINT,
    -- The token that created it (`system` for the first one, NULL for tokens older than this).
    ADD COLUMN created_by TEXT,
    ADD CONSTRAINT admin_tokens_revoke_reason_check
        CHECK (revoke_reason IS NULL OR revoked_at IS NOT NULL),
    ADD CONSTRAINT admin_tokens_retires_at_check
        CHECK ((retires_at IS NULL) = (replaced_by IS NULL));
