-- The storage sweeper and the worker ask whether an entry references a stored object.
CREATE INDEX media_entries_asset_key ON media_entries (asset_key);
