-- Retention (#25): a job finished longer ago than retention.finished_jobs_secs loses its
-- videos' rows, its webhook delivery and attempts and its dispatch row, a small batch per
-- transaction (store::retention); its row stays as a tombstone (pruned_at, its overview,
-- its times) so that its status can say what happened (410) and the job list still shows
-- it. Expand only: the previous release reads none of it.
ALTER TABLE jobs ADD COLUMN pruned_at TIMESTAMPTZ;

-- The pruner's queue and the oldest-kept gauge: finished jobs not pruned yet, oldest first.
-- Only the retention window's jobs are in it, however long the job list grows.
CREATE INDEX jobs_retained ON jobs (finished_at)
    WHERE finished_at IS NOT NULL AND pruned_at IS NULL;

-- Idempotency keys are deleted once their 24-hour window is over (an expired key already
-- does nothing: `store::idempotency::claim` takes it over).
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Deleted rows become reusable space only once vacuumed. PostgreSQL's default waits until
-- 20 % of a table is dead, which at archive scale is days of pruned rows carried in every
-- index; these tables are vacuumed after about 1 % (plus a floor, so that small
-- deployments are not vacuumed after every batch), so the space each pruning round frees
-- is reused by the next imports and the tables stop growing at retention × import rate.
ALTER TABLE job_items SET (autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 10000, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE webhook_attempts SET (autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 10000, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE webhook_deliveries SET (autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000);
ALTER TABLE idempotency_keys SET (autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000);
