-- keyroll schema (PostgreSQL): the audit log's hash chain (SPEC §8). Parallel to
-- migrations/sqlite/0006_audit_chain.sql.
--
-- Each entry carries the SHA-256 of the entry before it (32 zero bytes for the first) and its
-- own, over the canonical encoding of keyroll_core::audit_chain. The store computes both inside
-- the write transaction that appends the entry, after taking its append lock (a transaction-
-- scoped advisory lock, held until commit) so that concurrent writers on every node keep one
-- chain, and takes the entry's `seq` from the identity sequence under that lock (`INSERT …
-- OVERRIDING SYSTEM VALUE`), since the hash covers it. Entries written before this migration are chained by the
-- store when it opens the database, once: only while no entry has a hash yet. The columns stay
-- nullable for them; a NULL afterwards is reported by `keyroll audit verify` as an edited entry.
ALTER TABLE audit_log ADD COLUMN prev_hash BYTEA CHECK (prev_hash IS NULL OR octet_length(prev_hash) = 32);
ALTER TABLE audit_log ADD COLUMN hash BYTEA CHECK (hash IS NULL OR octet_length(hash) = 32);

-- Still append-only: the one update allowed fills in the hashes of an entry that has none,
-- leaving everything else as it was (the chaining at open).
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
        AND OLD.hash IS NULL AND OLD.prev_hash IS NULL
        AND NEW.hash IS NOT NULL AND NEW.prev_hash IS NOT NULL
        AND NEW.seq = OLD.seq AND NEW.at = OLD.at AND NEW.actor = OLD.actor
        AND NEW.action = OLD.action AND NEW.target = OLD.target AND NEW.detail = OLD.detail
        AND NEW.request_id IS NOT DISTINCT FROM OLD.request_id
        AND NEW.remote_addr IS NOT DISTINCT FROM OLD.remote_addr
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
