-- Rows that are updated after insert (an item's state, a job's counters, an entry on
-- re-import) need free space on their page for HOT updates; without it every update adds
-- index entries and lookups slow down as dead versions pile up.
ALTER TABLE job_items SET (fillfactor = 70);
ALTER TABLE jobs SET (fillfactor = 50);
ALTER TABLE media_entries SET (fillfactor = 80);
ALTER TABLE webhook_deliveries SET (fillfactor = 70);
