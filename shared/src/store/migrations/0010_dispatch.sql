-- Jobs whose videos are not all handed to the fetch queue yet. Workers hand them out in
-- fair order (round-robin between projects, then between a project's jobs) and keep the
-- fetch queue short, so a small batch never waits behind another project's backlog.
-- A row is deleted once its job's last video was handed out (or the job was cancelled).
CREATE TABLE dispatch (
    job_id          TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    project_id      BIGINT NOT NULL,
    system_name     TEXT NOT NULL,
    -- The next video (by idx) to hand out; videos before it are in the queue or done.
    next_idx        INTEGER NOT NULL DEFAULT 0,
    total           INTEGER NOT NULL,
    traceparent     TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- When this job last got messages: the least recently served go first.
    served_at       TIMESTAMPTZ
) WITH (fillfactor = 50);
