-- Projects own tokens, jobs and media-library entries.
CREATE TABLE projects (
    id              BIGSERIAL PRIMARY KEY,
    handle          TEXT NOT NULL UNIQUE,
    webhook_secret  TEXT NOT NULL,
    daily_limit     INTEGER,
    metadata_schema JSONB,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Only the SHA-256 of a token is stored; the token itself is shown once.
CREATE TABLE tokens (
    id          BIGSERIAL PRIMARY KEY,
    project_id  BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    scopes      TEXT[] NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    project_id   BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    system_name  TEXT NOT NULL,
    webhook      TEXT,
    -- The caller's context exactly as sent (raw JSON text), replayed byte for byte.
    context      TEXT,
    state        TEXT NOT NULL DEFAULT 'started' CHECK (state IN ('started', 'success', 'failed')),
    total        INTEGER NOT NULL,
    pending      INTEGER NOT NULL,
    imported     INTEGER NOT NULL DEFAULT 0,
    skipped      INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ
);
CREATE INDEX jobs_project_started ON jobs (project_id, started_at DESC);

CREATE TABLE job_items (
    job_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx          INTEGER NOT NULL,
    external_id  TEXT NOT NULL,
    url          TEXT NOT NULL,
    file_name    TEXT NOT NULL,
    metadata     JSONB NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'imported', 'skipped', 'failed')),
    reason       TEXT,
    media_id     TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, idx)
);

CREATE TABLE media_entries (
    id            TEXT PRIMARY KEY,
    project_id    BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    system_name   TEXT NOT NULL,
    external_id   TEXT NOT NULL,
    version       INTEGER NOT NULL DEFAULT 1,
    file_name     TEXT NOT NULL,
    metadata      JSONB NOT NULL,
    asset_key     TEXT NOT NULL,
    asset_size    BIGINT NOT NULL,
    mime_type     TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    original_url  TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (project_id, system_name, external_id)
);

-- Transactional outbox: rows written in the same transaction as the state they
-- announce, published with confirms by a relay, deleted once confirmed.
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    routing_key  TEXT NOT NULL,
    payload      JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    job_id        TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    webhook_id    TEXT NOT NULL,
    url           TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    delivered_at  TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE webhook_attempts (
    id           BIGSERIAL PRIMARY KEY,
    job_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    http_status  INTEGER,
    error        TEXT,
    duration_ms  INTEGER NOT NULL
);
CREATE INDEX webhook_attempts_job ON webhook_attempts (job_id);
