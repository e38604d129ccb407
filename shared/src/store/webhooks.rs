//! Webhook deliveries: created when a job finishes, read and recorded by the notifier for
//! every attempt, held while their receiver's host is busy, restarted by a redelivery
//! request, failed when the broker sets one aside.

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};

use super::{outbox, ItemState, JobState, WebhookState};
use crate::messages::DeliverWebhook;
use crate::queue;

/// Creates the `pending` delivery of a job that just finished and queues its first attempt
/// (in the job's trace).
pub async fn create(
    tx: &Transaction<'_>,
    job_id: &str,
    url: &str,
    trace_id: Option<&str>,
) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO webhook_deliveries (job_id, webhook_id, url, state) VALUES ($1, $2, $3, $4)",
        &[
            &job_id,
            &format!("msg_{job_id}"),
            &url,
            &WebhookState::Pending,
        ],
    )
    .await
    .context("creating the webhook delivery")?;
    let message = DeliverWebhook {
        job_id: job_id.to_string(),
        attempt: 1,
        url: Some(url.to_string()),
    };
    let traceparent = trace_id.and_then(crate::trace::header_for);
    outbox::enqueue(tx, queue::WEBHOOK, &[message], traceparent.as_deref()).await
}

/// A delivery after a redelivery request.
#[derive(Debug, Clone)]
pub struct Redelivery {
    /// Attempts made before this round.
    pub attempts: i32,
    pub webhook_id: String,
}

/// Moves the delivery of a finished job back to `pending`, starts a new round of the retry
/// schedule and queues its first attempt. The row lock makes concurrent requests queue
/// exactly one round each.
pub async fn redeliver(tx: &Transaction<'_>, job_id: &str) -> anyhow::Result<Redelivery> {
    let row = tx
        .query_one(
            "UPDATE webhook_deliveries SET state = $2, round_start = attempts
             WHERE job_id = $1
             RETURNING attempts, webhook_id, url, (SELECT trace_id FROM jobs WHERE id = $1)",
            &[&job_id, &WebhookState::Pending],
        )
        .await
        .context("restarting the webhook delivery")?;
    let attempts: i32 = row.get(0);
    let message = DeliverWebhook {
        job_id: job_id.to_string(),
        attempt: attempts as u32 + 1,
        url: Some(row.get(2)),
    };
    let trace_id: Option<String> = row.get(3);
    let traceparent = trace_id.as_deref().and_then(crate::trace::header_for);
    outbox::enqueue(tx, queue::WEBHOOK, &[message], traceparent.as_deref()).await?;
    Ok(Redelivery {
        attempts,
        webhook_id: row.get(1),
    })
}

/// Everything one attempt needs: the delivery, its job and the project's secrets.
#[derive(Debug, Clone)]
pub struct Due {
    pub webhook_id: String,
    pub url: String,
    /// The current secret, then the previous one while a rotation overlaps.
    pub secrets: Vec<String>,
    /// Attempts made before the current round (a redelivery starts a new round).
    pub round_start: u32,
    pub job: FinishedJob,
}

/// A finished job as its webhook reports it.
#[derive(Debug, Clone)]
pub struct FinishedJob {
    pub state: JobState,
    pub system_name: String,
    pub total: i32,
    pub imported: i32,
    pub skipped: i32,
    pub failed: i32,
    /// The caller's context, byte for byte.
    pub context: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The delivery of `job_id` if attempt number `attempt` is still to be made: it is pending
/// and fewer attempts were recorded. `None` when it was delivered, given up, or made.
pub async fn due(
    client: &impl GenericClient,
    job_id: &str,
    attempt: u32,
) -> anyhow::Result<Option<Due>> {
    let statement = client
        .prepare_cached(
            "SELECT d.state, d.attempts, d.webhook_id, d.url, p.webhook_secret,
                    j.state, j.system_name, j.total, j.imported, j.skipped, j.failed,
                    j.context, j.started_at, j.finished_at, d.round_start,
                    CASE WHEN p.previous_secret_expires_at > now() THEN p.previous_secret END
             FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id
             JOIN projects p ON p.id = j.project_id
             WHERE d.job_id = $1",
        )
        .await
        .context("preparing the delivery lookup")?;
    let Some(row) = client
        .query_opt(&statement, &[&job_id])
        .await
        .context("reading the webhook delivery")?
    else {
        return Ok(None);
    };
    let state: WebhookState = row.get(0);
    let attempts_made: i32 = row.get(1);
    if state != WebhookState::Pending || attempts_made >= attempt as i32 {
        return Ok(None);
    }
    let mut secrets = vec![row.get::<_, String>(4)];
    secrets.extend(row.get::<_, Option<String>>(15));
    Ok(Some(Due {
        webhook_id: row.get(2),
        url: row.get(3),
        secrets,
        round_start: row.get::<_, i32>(14).max(0) as u32,
        job: FinishedJob {
            state: row.get(5),
            system_name: row.get(6),
            total: row.get(7),
            imported: row.get(8),
            skipped: row.get(9),
            failed: row.get(10),
            context: row.get(11),
            started_at: row.get(12),
            finished_at: row.get(13),
        },
    }))
}

/// The first `limit` failed videos of a job, in batch order: external id and reason.
pub async fn failures(
    client: &impl GenericClient,
    job_id: &str,
    limit: i64,
) -> anyhow::Result<Vec<(String, String)>> {
    let statement = client
        .prepare_cached(
            "SELECT external_id, reason FROM job_items
             WHERE job_id = $1 AND state = $2 ORDER BY idx LIMIT $3",
        )
        .await
        .context("preparing the failures query")?;
    let rows = client
        .query(&statement, &[&job_id, &ItemState::Failed, &limit])
        .await
        .context("reading the job's failed videos")?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
        .collect())
}

/// One attempt as it is recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord<'a> {
    pub job_id: &'a str,
    /// Its number, from 1.
    pub number: u32,
    /// The delivery's state after it.
    pub state: WebhookState,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i32,
}

/// Stores an attempt and the delivery's new state in one statement (one round trip, one
/// commit).
pub async fn record_attempt(
    client: &impl GenericClient,
    attempt: &AttemptRecord<'_>,
) -> anyhow::Result<()> {
    let statement = client
        .prepare_cached(
            "WITH attempt AS (
                 INSERT INTO webhook_attempts (job_id, http_status, error, duration_ms)
                 VALUES ($1, $5, $4, $6)
             )
             UPDATE webhook_deliveries SET attempts = GREATEST(attempts, $2), state = $3,
                 last_error = COALESCE($4, last_error),
                 delivered_at = CASE WHEN $3 = $7 THEN now() ELSE delivered_at END
             WHERE job_id = $1",
        )
        .await
        .context("preparing the attempt record")?;
    client
        .execute(
            &statement,
            &[
                &attempt.job_id,
                &(attempt.number as i32),
                &attempt.state,
                &attempt.error,
                &attempt.http_status.map(i32::from),
                &attempt.duration_ms,
                &WebhookState::Delivered,
            ],
        )
        .await
        .context("recording the webhook attempt")?;
    Ok(())
}

/// Fails a still-pending delivery with `reason` (its message was dead-lettered).
pub async fn fail_pending(
    client: &impl GenericClient,
    job_id: &str,
    reason: &str,
) -> anyhow::Result<()> {
    client
        .execute(
            "UPDATE webhook_deliveries SET state = $3, last_error = $2
             WHERE job_id = $1 AND state = $4",
            &[
                &job_id,
                &reason,
                &WebhookState::Failed,
                &WebhookState::Pending,
            ],
        )
        .await
        .context("failing the dead-lettered webhook delivery")?;
    Ok(())
}

/// Holds attempt `attempt` of the job's delivery until its receiver's `host` has a free slot
/// (the message that carried it is then acknowledged); `false` when there is nothing to
/// hold (delivered, given up, or the attempt was made).
pub async fn hold(
    client: &impl GenericClient,
    job_id: &str,
    attempt: u32,
    host: &str,
) -> anyhow::Result<bool> {
    let statement = client
        .prepare_cached(
            "UPDATE webhook_deliveries SET held_host = $3, held_attempt = $2, held_at = now()
             WHERE job_id = $1 AND state = $4 AND attempts < $2",
        )
        .await
        .context("preparing the hold")?;
    let held = client
        .execute(
            &statement,
            &[&job_id, &(attempt as i32), &host, &WebhookState::Pending],
        )
        .await
        .context("holding the webhook delivery")?;
    Ok(held == 1)
}

/// Hosts with held deliveries, and how many each.
pub async fn held_hosts(client: &impl GenericClient) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = client
        .query(
            "SELECT held_host, count(*) FROM webhook_deliveries WHERE held_host IS NOT NULL
             GROUP BY held_host",
            &[],
        )
        .await
        .context("reading the hosts with held deliveries")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A held delivery being let go.
#[derive(Debug, Clone)]
pub struct Held {
    pub job_id: String,
    pub attempt: u32,
    pub url: String,
    /// The job's W3C trace id.
    pub trace_id: Option<String>,
}

/// Locks up to `limit` of the host's held deliveries, longest held first; rows another
/// notifier is letting go are skipped. The caller publishes them, then calls [`unhold`] in
/// the same transaction.
pub async fn take_held(tx: &Transaction<'_>, host: &str, limit: i64) -> anyhow::Result<Vec<Held>> {
    let rows = tx
        .query(
            "SELECT d.job_id, d.held_attempt, d.url, j.trace_id
             FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id
             WHERE d.held_host = $1 ORDER BY d.held_at LIMIT $2
             FOR UPDATE OF d SKIP LOCKED",
            &[&host, &limit],
        )
        .await
        .context("taking held deliveries")?;
    Ok(rows
        .iter()
        .map(|r| Held {
            job_id: r.get(0),
            attempt: r.get::<_, i32>(1).max(1) as u32,
            url: r.get(2),
            trace_id: r.get(3),
        })
        .collect())
}

/// Ends the hold of deliveries whose messages were published again.
pub async fn unhold(tx: &Transaction<'_>, job_ids: &[&str]) -> anyhow::Result<()> {
    tx.execute(
        "UPDATE webhook_deliveries SET held_host = NULL, held_attempt = NULL, held_at = NULL
         WHERE job_id = ANY($1)",
        &[&job_ids],
    )
    .await
    .context("ending the holds")?;
    Ok(())
}
