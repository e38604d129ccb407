-- Secret rotation: the previous secret keeps signing (as a second signature) until it expires.
ALTER TABLE projects
    ADD COLUMN previous_secret TEXT,
    ADD COLUMN previous_secret_expires_at TIMESTAMPTZ;

-- Redelivery on demand starts a new round of the retry schedule after the attempts made so far.
ALTER TABLE webhook_deliveries
    ADD COLUMN round_start INTEGER NOT NULL DEFAULT 0;
