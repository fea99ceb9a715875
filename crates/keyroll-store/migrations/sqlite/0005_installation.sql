-- keyroll schema (SQLite): which installation a database belongs to, and a row to test writes.
--
-- Conventions as in 0001_init.sql (times in unix milliseconds, no secrets, STRICT tables).

-- The id of the installation this database was made for, written once. The data directory keeps
-- the same id in its `installation` file, so a database replaced by another installation's is
-- told apart at start. One row at most.
CREATE TABLE installation (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    id TEXT NOT NULL CHECK (length(id) BETWEEN 1 AND 200),
    created_at INTEGER NOT NULL
) STRICT;

-- Written only after a write failed (a full disk, say), to find out whether writes work again:
-- a read would succeed all along. One row at most.
CREATE TABLE write_probe (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    at INTEGER NOT NULL
) STRICT;
