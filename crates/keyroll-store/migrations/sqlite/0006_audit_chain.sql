-- keyroll schema (SQLite): the audit log's hash chain (SPEC §8).
--
-- Conventions as in 0001_init.sql (times in unix milliseconds, no secrets, STRICT tables).
--
-- Each entry carries the SHA-256 of the entry before it (32 zero bytes for the first) and its
-- own, over the canonical encoding of keyroll_core::audit_chain. The store computes both inside
-- the write transaction that appends the entry. SQLite cannot compute the encoding, so entries
-- written before this migration are chained by the store when it opens the database, once: only
-- while no entry has a hash yet (see sqlite/audit.rs). The columns stay nullable for them; a
-- NULL afterwards is reported by `keyroll audit verify` as an edited entry.
ALTER TABLE audit_log ADD COLUMN prev_hash BLOB CHECK (prev_hash IS NULL OR length(prev_hash) = 32);
ALTER TABLE audit_log ADD COLUMN hash BLOB CHECK (hash IS NULL OR length(hash) = 32);

-- Still append-only: the one update allowed fills in the hashes of an entry that has none,
-- leaving everything else as it was (the chaining at open).
DROP TRIGGER audit_log_no_update;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
WHEN NOT (
    OLD.hash IS NULL AND OLD.prev_hash IS NULL
    AND NEW.hash IS NOT NULL AND NEW.prev_hash IS NOT NULL
    AND NEW.seq = OLD.seq AND NEW.at = OLD.at AND NEW.actor = OLD.actor
    AND NEW.action = OLD.action AND NEW.target = OLD.target AND NEW.detail = OLD.detail
    AND NEW.request_id IS OLD.request_id AND NEW.remote_addr IS OLD.remote_addr
)
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
