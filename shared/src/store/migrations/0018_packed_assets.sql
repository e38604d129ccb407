-- Small videos are stored as ranges of pack files: an entry's asset_key is then
-- `packs/NAME.pack@OFFSET+LENGTH`. The storage sweeper asks whether any entry references a
-- range of a pack (the key before the '@'); media_entries_asset_key stays for the exact
-- lookups of the worker and of the previous release.
CREATE INDEX media_entries_asset_object ON media_entries (split_part(asset_key, '@', 1));
