-- A job made by `POST /api/v1/import/videos/{id}/retry` names the job it retries. Expand
-- only: the previous release reads none of it. SET NULL, so pruning an old job keeps its
-- retries.
ALTER TABLE jobs ADD COLUMN retry_of TEXT REFERENCES jobs(id) ON DELETE SET NULL;
CREATE INDEX jobs_retry_of ON jobs (retry_of) WHERE retry_of IS NOT NULL;
