-- A job cancelled by its owner: its unfinished videos failed with reason "cancelled".
ALTER TABLE jobs ADD COLUMN cancelled_at TIMESTAMPTZ;
