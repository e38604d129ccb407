-- The W3C trace id of each job, and the traceparent each outbox message is published with,
-- so every log line about a job carries its trace id in every binary.
ALTER TABLE jobs ADD COLUMN trace_id TEXT;
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
