-- Rotation schedules, delivery paths, the policy baseline and environment ordering (SPEC §7).
--
-- - consumers.rotate_every_ms: a new version falls due this long after the active one was
--   issued (NULL: no schedule). rotation_grace_ms: the grace of a scheduled rotation (NULL: the
--   default). delivery: how a new key reaches the consumer.
-- - consumers.managed_spec: the settings the last policy `apply` left the consumer with, as JSON
--   (NULL: not managed by a policy); a later change outside the policy is drift against it.
-- - key_versions.due_raised / expiry_warned: `rotation.due` and `key.expiring` were raised for
--   the version (each once).
-- - environments.rotate_after: a rotation here waits for the same consumer's completed rotation
--   in the named environment.
-- Numbered 0007: 0006 is the audit chain.

ALTER TABLE consumers ADD COLUMN rotate_every_ms INTEGER CHECK (rotate_every_ms > 0);
ALTER TABLE consumers ADD COLUMN rotation_grace_ms INTEGER CHECK (rotation_grace_ms >= 0);
ALTER TABLE consumers ADD COLUMN delivery TEXT NOT NULL DEFAULT 'manual'
    CHECK (delivery IN ('agent', 'ci', 'manual'));
ALTER TABLE consumers ADD COLUMN managed_spec TEXT;

ALTER TABLE key_versions ADD COLUMN due_raised INTEGER NOT NULL DEFAULT 0
    CHECK (due_raised IN (0, 1));
ALTER TABLE key_versions ADD COLUMN expiry_warned INTEGER NOT NULL DEFAULT 0
    CHECK (expiry_warned IN (0, 1));

ALTER TABLE environments ADD COLUMN rotate_after TEXT REFERENCES environments (name);
