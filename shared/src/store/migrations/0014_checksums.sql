-- Fixity: the checksums a video was submitted with, and the MD5 of each stored file beside
-- its SHA-256. Expand only: the previous release reads none of these columns.
ALTER TABLE job_items
    ADD COLUMN expected_sha256 TEXT,
    ADD COLUMN expected_md5 TEXT;
ALTER TABLE media_entries ADD COLUMN md5 TEXT;
