-- Idempotency-Key on imports: the same key and body within 24 hours returns the first job.
CREATE TABLE idempotency_keys (
    project_id    BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    job_id        TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, key)
);

-- Quota windows and job listings read a project's recent jobs by time.
CREATE INDEX jobs_project_state_started ON jobs (project_id, state, started_at DESC);
