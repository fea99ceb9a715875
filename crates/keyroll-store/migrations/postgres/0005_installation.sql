-- keyroll schema, version 5 (PostgreSQL): the same changes as migrations/sqlite/0005_installation.sql.
--
-- Conventions as in 0001_init.sql (times in unix milliseconds as BIGINT, no secrets, named
-- constraints).

-- The id of the installation this database was made for, written once. One row at most.
CREATE TABLE installation (
    only_row INTEGER PRIMARY KEY CONSTRAINT installation_only_row_check CHECK (only_row = 1),
    id TEXT NOT NULL CONSTRAINT installation_id_check CHECK (length(id) BETWEEN 1 AND 200),
    created_at BIGINT NOT NULL
);

-- Written only after a write failed, to find out whether writes work again. One row at most.
CREATE TABLE write_probe (
    only_row INTEGER PRIMARY KEY CONSTRAINT write_probe_only_row_check CHECK (only_row = 1),
    at BIGINT NOT NULL
);
