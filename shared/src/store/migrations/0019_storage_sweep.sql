-- When the storage sweeper last finished (one row): every worker looks every
-- storage.sweep_interval_secs, and one that finds a sweep finished less than that long ago
-- leaves it, so a fleet sweeps once per interval rather than once per worker. Expand only:
-- the previous release reads nothing of it.
CREATE TABLE storage_sweep (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    last_finished_at TIMESTAMPTZ NOT NULL
);
