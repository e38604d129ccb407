//! The backlog of every kind of work, for the API's gauges.

use anyhow::Context;
use deadpool_postgres::GenericClient;

use super::WebhookState;

/// Work waiting, by kind: how much, and how long the oldest has waited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backlog {
    /// Videos of unfinished jobs not yet imported, skipped or failed.
    pub videos: i64,
    /// Seconds since the oldest unfinished job was accepted.
    pub videos_oldest_secs: f64,
    /// Webhook deliveries not yet delivered or given up.
    pub webhooks: i64,
    pub webhooks_oldest_secs: f64,
    /// Messages committed but not yet published.
    pub outbox: i64,
    pub outbox_oldest_secs: f64,
}

/// The backlog of every kind of work, from small indexed reads.
pub async fn backlog(client: &impl GenericClient) -> anyhow::Result<Backlog> {
    let row = client
        .query_one(
            "SELECT
                 (SELECT coalesce(sum(pending), 0)::bigint FROM jobs WHERE finished_at IS NULL),
                 (SELECT coalesce(extract(epoch FROM now() - min(started_at)), 0)::float8
                    FROM jobs WHERE finished_at IS NULL),
                 (SELECT count(*) FROM webhook_deliveries WHERE state = $1),
                 (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
                    FROM webhook_deliveries WHERE state = $1),
                 (SELECT count(*) FROM outbox),
                 (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM outbox)",
            &[&WebhookState::Pending],
        )
        .await
        .context("measuring the backlog")?;
    Ok(Backlog {
        videos: row.get(0),
        videos_oldest_secs: row.get(1),
        webhooks: row.get(2),
        webhooks_oldest_secs: row.get(3),
        outbox: row.get(4),
        outbox_oldest_secs: row.get(5),
    })
}
