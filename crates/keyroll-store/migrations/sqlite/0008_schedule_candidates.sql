-- The consumers the schedule's runner reads every interval, instead of every consumer: those with
-- a period, those with a valid version whose hard expiry has not been announced, and the
-- same-named consumers of an environment that another environment rotates after (an ordering
-- rule looks at them). With a million consumers and few schedules this is the difference between
-- reading the database and reading a handful of rows.

CREATE INDEX consumers_scheduled ON consumers (id) WHERE rotate_every_ms IS NOT NULL;
CREATE INDEX key_versions_expiring ON key_versions (consumer_id)
    WHERE expires_at IS NOT NULL AND expiry_warned = 0;

CREATE VIEW schedule_candidates AS
    SELECT id FROM consumers WHERE rotate_every_ms IS NOT NULL
    UNION
    SELECT consumer_id FROM key_versions
        WHERE expires_at IS NOT NULL AND expiry_warned = 0 AND state IN ('active', 'retiring')
    UNION
    SELECT earlier.id FROM consumers earlier
        JOIN environments later ON later.rotate_after = earlier.environment
        JOIN consumers scheduled
            ON scheduled.environment = later.name AND scheduled.name = earlier.name
        WHERE scheduled.rotate_every_ms IS NOT NULL;
