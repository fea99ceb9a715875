-- Rotation schedules, delivery paths, the policy baseline and environment ordering (SPEC §7).
-- Same columns and meaning as migrations/sqlite/0007_schedule.sql.

ALTER TABLE consumers ADD COLUMN rotate_every_ms BIGINT CHECK (rotate_every_ms > 0);
ALTER TABLE consumers ADD COLUMN rotation_grace_ms BIGINT CHECK (rotation_grace_ms >= 0);
ALTER TABLE consumers ADD COLUMN delivery TEXT NOT NULL DEFAULT 'manual'
    CHECK (delivery IN ('agent', 'ci', 'manual'));
ALTER TABLE consumers ADD COLUMN managed_spec TEXT;

ALTER TABLE key_versions ADD COLUMN due_raised BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE key_versions ADD COLUMN expiry_warned BOOLEAN NOT NULL DEFAULT FALSE;

ALTER TABLE environments ADD COLUMN rotate_after TEXT REFERENCES environments (name);
