-- A delivery whose receiver's host has no free slot is held here instead of cycling through
-- the delay queues; a notifier with a free slot for that host publishes it again.
ALTER TABLE webhook_deliveries
    ADD COLUMN held_host TEXT,
    ADD COLUMN held_attempt INTEGER,
    ADD COLUMN held_at TIMESTAMPTZ;
CREATE INDEX webhook_deliveries_held ON webhook_deliveries (held_host, held_at)
    WHERE held_host IS NOT NULL;
