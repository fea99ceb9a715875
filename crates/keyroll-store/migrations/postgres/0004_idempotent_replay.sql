-- Idempotent replays can show a lost key again without the database being able to: the key
-- the first answer showed is kept only sealed (AEAD) under a key derived from the
-- Idempotency-Key, and `key` now holds a hash of the Idempotency-Key (another derivation), never
-- the header value. Sealed keys are cleared 24 h after their answer.
ALTER TABLE idempotency_keys ADD COLUMN sealed_key BYTEA;
-- Records written before hold the header value itself; the server looks records up by its hash
-- now, so they could never be found again: drop them rather than keep the values.
DELETE FROM idempotency_keys;
-- For clearing sealed keys past their window on every idempotent write.
CREATE INDEX idempotency_keys_sealed ON idempotency_keys (created_at) WHERE sealed_key IS NOT NULL;
