-- Source rules: per project, the credentials a URL prefix (or an s3:// bucket) is fetched
-- with. Secrets are sealed (AES-256-GCM) by the key whose id is beside them; what may be
-- shown (prefix, header names, the S3 region, endpoint and access key id) is in clear.
-- Expand only: a new table that the previous release does not read.
CREATE TABLE IF NOT EXISTS source_rules (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    prefix TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('http', 's3')),
    allow_http BOOLEAN NOT NULL DEFAULT false,
    header_names TEXT[] NOT NULL DEFAULT '{}',
    basic_auth BOOLEAN NOT NULL DEFAULT false,
    s3_region TEXT,
    s3_endpoint TEXT,
    s3_access_key_id TEXT,
    key_id TEXT NOT NULL,
    sealed BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (project_id, prefix)
);
CREATE INDEX IF NOT EXISTS source_rules_key_id ON source_rules (key_id);
