-- The backlog gauges read unfinished jobs and pending deliveries every few seconds: keep
-- those reads small however many finished rows there are.
CREATE INDEX jobs_unfinished ON jobs (started_at) WHERE finished_at IS NULL;
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (created_at) WHERE state = 'pending';
