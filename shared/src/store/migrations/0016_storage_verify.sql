-- Stored files checked again (`storage verify`, `storage.verify_rate_mib`): an entry whose
-- stored object was found missing or changed is marked, so that its next import downloads
-- again instead of skipping; a re-import (or a re-verification that finds the object fine)
-- clears the mark. Expand only: the previous release reads none of these columns.
ALTER TABLE media_entries
    ADD COLUMN damaged_at TIMESTAMPTZ,
    ADD COLUMN damage_kind TEXT,
    ADD COLUMN damage TEXT;
-- The damaged entries are few: the gauge counts them and the runbook lists them from here.
CREATE INDEX media_entries_damaged ON media_entries (id) WHERE damaged_at IS NOT NULL;
-- Where the continuous verifier got to (one row, written by the worker that holds the
-- verifier's lock), so that a restart continues the round instead of starting it again.
CREATE TABLE storage_verify (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The last entry verified in this round, in id order; NULL: the round starts at the top.
    last_entry_id TEXT,
    round_started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_round_finished_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
