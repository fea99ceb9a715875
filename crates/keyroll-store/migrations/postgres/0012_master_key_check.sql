-- keyroll schema (PostgreSQL): the check value of the master key the database's sealed secrets
-- are made under (a one-way derivation of the key, never the key), recorded by the first node that
-- starts with a master key, so a node started with another key refuses to start instead of
-- failing to open webhook secrets later.
ALTER TABLE installation ADD COLUMN master_key_check BYTEA CHECK (master_key_check IS NULL OR octet_length(master_key_check) = 32);
