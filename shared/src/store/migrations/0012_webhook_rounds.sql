-- Rounds of a webhook delivery: the first when its job finishes, one more with each
-- redelivery request. Only an attempt of the delivery's current round changes its state, so
-- the late answer to an attempt made before a redelivery cannot overwrite the redelivery's.
-- Expand only: the previous release reads none of these columns and keeps working.
ALTER TABLE webhook_deliveries
    ADD COLUMN round INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN held_round INTEGER;
ALTER TABLE webhook_attempts
    ADD COLUMN round INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN number INTEGER;
