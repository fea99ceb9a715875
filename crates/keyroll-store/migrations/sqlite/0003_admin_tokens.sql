-- keyroll schema, version 3 (SQLite): the admin-token lifecycle (expiry, revocation, rotation).
--
-- Conventions as in 0001_init.sql (times in unix milliseconds, no secrets, STRICT tables).
-- Tokens made before this version get NULL everywhere: they never expire, are not revoked and
-- were not replaced, which is what they were.

-- When the token stops working by itself (`--expires-in`); NULL = never.
ALTER TABLE admin_tokens ADD COLUMN expires_at INTEGER;
-- When and why it was revoked; a reason only with a time.
ALTER TABLE admin_tokens ADD COLUMN revoked_at INTEGER;
ALTER TABLE admin_tokens ADD COLUMN revoke_reason TEXT
    CHECK (revoke_reason IS NULL OR revoked_at IS NOT NULL);
-- The token that replaced it in a rotation, and the end of the overlap during which both work.
ALTER TABLE admin_tokens ADD COLUMN replaced_by TEXT REFERENCES admin_tokens (id);
ALTER TABLE admin_tokens ADD COLUMN retires_at INTEGER
    CHECK ((retires_at IS NULL) = (replaced_by IS NULL));
-- The token that created it (`system` for the first one, NULL for tokens older than this).
ALTER TABLE admin_tokens ADD COLUMN created_by TEXT;
