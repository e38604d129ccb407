-- Validators of the source, for conditional re-imports, and technical metadata of the video.
ALTER TABLE media_entries
    ADD COLUMN source_etag TEXT,
    ADD COLUMN source_last_modified TEXT,
    ADD COLUMN duration_seconds DOUBLE PRECISION,
    ADD COLUMN width INTEGER,
    ADD COLUMN height INTEGER,
    ADD COLUMN video_codec TEXT;
