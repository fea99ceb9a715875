-- The consumers the schedule's runner reads every interval (see
-- migrations/sqlite/0008_schedule_candidates.sql).

CREATE INDEX consumers_scheduled ON consumers (id) WHERE rotate_every_ms IS NOT NULL;
CREATE INDEX key_versions_expiring ON key_versions (consumer_id)
    WHERE expires_at IS NOT NULL AND NOT expiry_warned;

CREATE VIEW schedule_candidates AS
    SELECT id FROM consumers WHERE rotate_every_ms IS NOT NULL
    UNION
    SELECT consumer_id FROM key_versions
        WHERE expires_at IS NOT NULL AND NOT expiry_warned AND state IN ('active', 'retiring')
    UNION
    SELECT earlier.id FROM consumers earlier
        JOIN environments later ON later.rotate_after = earlier.environment
        JOIN consumers scheduled
            ON scheduled.environment = later.name AND scheduled.name = earlier.name
        WHERE scheduled.rotate_every_ms IS NOT NULL;
