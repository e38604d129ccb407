//! Webhook deliveries: created when a job finishes, read and recorded by the notifier for
//! every attempt, held while their receiver's host is busy, given a new round by a redelivery
//! request, failed when the broker sets one aside.
//!
//! A delivery's attempts come in rounds: round 1 when its job finishes, one more with each
//! redelivery request. Only an attempt of the delivery's current round, while it is still
//! pending, changes its state: the late answer to an attempt made before a redelivery is
//! recorded in the history and changes nothing else. A superseded round's first attempt is
//! still made once (each accepted redelivery request sends its round), but never retried.

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};

use super::{ItemState, JobState, WebhookState};
use crate::hosts::host_key;

/// A round that just started: its first attempt is to be queued in the same transaction
/// (`DeliverWebhook::announce`), or the delivery waits forever.
#[must_use = "a started round must be announced in the transaction that started it"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundStarted {
    pub job_id: String,
    pub round: u32,
    /// The number of its first attempt over all rounds.
    pub attempt: u32,
    pub url: String,
    /// The job's W3C trace id.
    pub trace_id: Option<String>,
    /// The `traceparent` of the span whose work started the round (the video that finished
    /// the job), parent of its first attempt; `None`: a new child of the job's trace.
    pub traceparent: Option<String>,
}

/// Creates the `pending` delivery of a job that just finished, in round 1. Returns the round
/// to announce, or `None` when the delivery was created held because its receiver's host has
/// held deliveries already (its message would only be consumed to be held).
pub async fn create(
    tx: &Transaction<'_>,
    job_id: &str,
    url: &str,
    trace_id: Option<&str>,
) -> anyhow::Result<Option<RoundStarted>> {
    let host = host_key(url);
    let held = tx
        .execute(
            "INSERT INTO webhook_deliveries
                 (job_id, webhook_id, url, state, held_host, held_round, held_attempt, held_at)
             SELECT $1, $2, $3, $4, $5, 1, 1, now()
             WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE held_host = $5)",
            &[
                &job_id,
                &format!("msg_{job_id}"),
                &url,
                &WebhookState::Pending,
                &host,
            ],
        )
        .await
        .context("creating the webhook delivery")?;
    if held == 1 {
        return Ok(None);
    }
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
    Ok(Some(RoundStarted {
        job_id: job_id.to_string(),
        round: 1,
        attempt: 1,
        url: url.to_string(),
        trace_id: trace_id.map(str::to_string),
        traceparent: None,
    }))
}

/// A delivery after a redelivery request.
#[derive(Debug, Clone)]
pub struct Redelivery {
    /// Attempts made before this round.
    pub attempts: i32,
    pub webhook_id: String,
    /// The new round, to announce.
    pub started: RoundStarted,
}

/// Moves the delivery of a finished job back to `pending` in a new round, which starts the
/// retry schedule again; a hold ends (the new round is queued at once). The row lock makes
/// concurrent requests start one round each.
pub async fn redeliver(tx: &Transaction<'_>, job_id: &str) -> anyhow::Result<Redelivery> {
    let row = tx
        .query_one(
            "UPDATE webhook_deliveries SET state = $2, round = round + 1, round_start = attempts,
                 held_host = NULL, held_round = NULL, held_attempt = NULL, held_at = NULL
             WHERE job_id = $1
             RETURNING attempts, webhook_id, url, round, (SELECT trace_id FROM jobs WHERE id = $1)",
            &[&job_id, &WebhookState::Pending],
        )
        .await
        .context("restarting the webhook delivery")?;
    let attempts: i32 = row.get(0);
    Ok(Redelivery {
        attempts,
        webhook_id: row.get(1),
        started: RoundStarted {
            job_id: job_id.to_string(),
            round: row.get::<_, i32>(3) as u32,
            attempt: attempts as u32 + 1,
            url: row.get(2),
            trace_id: row.get(4),
            traceparent: None,
        },
    })
}

/// Everything one attempt needs: the delivery, its job and the project's secrets.
#[derive(Debug, Clone)]
pub struct Due {
    pub webhook_id: String,
    pub url: String,
    /// The current secret, then the previous one while a rotation overlaps.
    pub secrets: Vec<String>,
    /// The attempt's round.
    pub round: u32,
    /// The attempt belongs to a round that a redelivery request has since superseded: it is
    /// made once, changes no state and is not retried.
    pub superseded: bool,
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

/// The delivery of `job_id` if attempt number `attempt` of `round` (`None`: the current
/// one) is still to be made: in the current round, while it is pending and fewer attempts
/// were recorded; in a superseded round, while none of its attempts was recorded. `None`
/// when there is nothing to send.
pub async fn due(
    client: &impl GenericClient,
    job_id: &str,
    round: Option<u32>,
    attempt: u32,
) -> anyhow::Result<Option<Due>> {
    let statement = client
        .prepare_cached(
            "SELECT d.state, d.attempts, d.webhook_id, d.url, p.webhook_secret,
                    j.state, j.system_name, j.total, j.imported, j.skipped, j.failed,
                    j.context, j.started_at, j.finished_at, d.round_start,
                    CASE WHEN p.previous_secret_expires_at > now() THEN p.previous_secret END,
                    d.round,
                    EXISTS (SELECT 1 FROM webhook_attempts a
                            WHERE a.job_id = d.job_id AND a.round = COALESCE($2, d.round))
             FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id
             JOIN projects p ON p.id = j.project_id
             WHERE d.job_id = $1",
        )
        .await
        .context("preparing the delivery lookup")?;
    let asked = round.map(|r| r as i32);
    let Some(row) = client
        .query_opt(&statement, &[&job_id, &asked])
        .await
        .context("reading the webhook delivery")?
    else {
        return Ok(None);
    };
    let state: WebhookState = row.get(0);
    let attempts_made: i32 = row.get(1);
    let current = row.get::<_, i32>(16) as u32;
    let round = round.unwrap_or(current);
    let round_attempted: bool = row.get(17);
    let superseded = round < current;
    let is_due = if superseded {
        !round_attempted
    } else {
        round == current && state == WebhookState::Pending && attempts_made < attempt as i32
    };
    if !is_due {
        return Ok(None);
    }
    let mut secrets = vec![row.get::<_, String>(4)];
    secrets.extend(row.get::<_, Option<String>>(15));
    Ok(Some(Due {
        webhook_id: row.get(2),
        url: row.get(3),
        secrets,
        round,
        superseded,
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
pub struct AttemptRecord {
    pub job_id: String,
    /// The round it belongs to.
    pub round: u32,
    /// Its number over all rounds, from 1.
    pub number: u32,
    /// The delivery's state after it (applied only while its round is current and pending).
    pub state: WebhookState,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i32,
}

/// Stores several attempts in the history, and moves each delivery whose current round the
/// attempt belongs to (and which is still pending) to the attempt's state, in one statement
/// (one round trip, one commit). An attempt of a superseded round, or one that arrives after
/// its round ended, is history only.
pub async fn record_attempts(
    client: &impl GenericClient,
    attempts: &[AttemptRecord],
) -> anyhow::Result<()> {
    let statement = client
        .prepare_cached(
            "WITH attempt AS (
                 INSERT INTO webhook_attempts
                     (job_id, http_status, error, duration_ms, round, number)
                 SELECT * FROM unnest($1::text[], $2::int4[], $3::text[], $4::int4[],
                                      $8::int4[], $5::int4[])
             )
             UPDATE webhook_deliveries AS d SET attempts = GREATEST(d.attempts, u.number),
                 state = u.state, last_error = COALESCE(u.error, d.last_error),
                 delivered_at = CASE WHEN u.state = $7 THEN now() ELSE d.delivered_at END
             FROM unnest($1::text[], $5::int4[], $6::text[], $3::text[], $8::int4[])
                 AS u(job_id, number, state, error, round)
             WHERE d.job_id = u.job_id AND d.round = u.round AND d.state = $9",
        )
        .await
        .context("preparing the attempt records")?;
    let job_ids: Vec<&str> = attempts.iter().map(|a| a.job_id.as_str()).collect();
    let statuses: Vec<Option<i32>> = attempts
        .iter()
        .map(|a| a.http_status.map(i32::from))
        .collect();
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    let durations: Vec<i32> = attempts.iter().map(|a| a.duration_ms).collect();
    let numbers: Vec<i32> = attempts.iter().map(|a| a.number as i32).collect();
    let states: Vec<WebhookState> = attempts.iter().map(|a| a.state).collect();
    let rounds: Vec<i32> = attempts.iter().map(|a| a.round as i32).collect();
    client
        .execute(
            &statement,
            &[
                &job_ids,
                &statuses,
                &errors,
                &durations,
                &numbers,
                &states,
                &WebhookState::Delivered,
                &rounds,
                &WebhookState::Pending,
            ],
        )
        .await
        .context("recording the webhook attempts")?;
    Ok(())
}

/// The current round and URL of the job's delivery while it is pending; `None` otherwise.
pub async fn pending_round(
    client: &impl GenericClient,
    job_id: &str,
) -> anyhow::Result<Option<(u32, String)>> {
    let row = client
        .query_opt(
            "SELECT round, url FROM webhook_deliveries WHERE job_id = $1 AND state = $2",
            &[&job_id, &WebhookState::Pending],
        )
        .await
        .context("reading the webhook delivery's round")?;
    Ok(row.map(|r| (r.get::<_, i32>(0) as u32, r.get(1))))
}

/// Fails a still-pending delivery with `reason` (its message was dead-lettered), if `round`
/// (`None`: any) is its current one.
pub async fn fail_pending(
    client: &impl GenericClient,
    job_id: &str,
    round: Option<u32>,
    reason: &str,
) -> anyhow::Result<()> {
    let round = round.map(|r| r as i32);
    client
        .execute(
            "UPDATE webhook_deliveries SET state = $3, last_error = $2
             WHERE job_id = $1 AND state = $4 AND ($5::int4 IS NULL OR round = $5)",
            &[
                &job_id,
                &reason,
                &WebhookState::Failed,
                &WebhookState::Pending,
                &round,
            ],
        )
        .await
        .context("failing the dead-lettered webhook delivery")?;
    Ok(())
}

/// A delivery to hold: attempt `attempt` of the job's delivery, whose receiver's `host`
/// has no free slot.
#[derive(Debug, Clone)]
pub struct Hold {
    pub job_id: String,
    /// The attempt's round (`None`: the current one): only the current round is held.
    pub round: Option<u32>,
    pub attempt: u32,
    pub host: String,
}

/// Holds each delivery until its host has a free slot (the message that carried it is then
/// acknowledged), in one statement; for each, `false` when there was nothing to hold
/// (delivered, given up, or the attempt was made).
pub async fn hold(client: &impl GenericClient, holds: &[Hold]) -> anyhow::Result<Vec<bool>> {
    let statement = client
        .prepare_cached(
            "UPDATE webhook_deliveries AS d
             SET held_host = u.host, held_round = u.round, held_attempt = u.attempt,
                 held_at = now()
             FROM unnest($1::text[], $2::int4[], $3::text[], $5::int4[])
                 AS u(job_id, attempt, host, round)
             WHERE d.job_id = u.job_id AND d.state = $4 AND d.attempts < u.attempt
                 AND (u.round IS NULL OR d.round = u.round)
             RETURNING d.job_id",
        )
        .await
        .context("preparing the holds")?;
    let job_ids: Vec<&str> = holds.iter().map(|h| h.job_id.as_str()).collect();
    let attempts: Vec<i32> = holds.iter().map(|h| h.attempt as i32).collect();
    let hosts: Vec<&str> = holds.iter().map(|h| h.host.as_str()).collect();
    let rounds: Vec<Option<i32>> = holds.iter().map(|h| h.round.map(|r| r as i32)).collect();
    let held: std::collections::HashSet<String> = client
        .query(
            &statement,
            &[&job_ids, &attempts, &hosts, &WebhookState::Pending, &rounds],
        )
        .await
        .context("holding webhook deliveries")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(holds.iter().map(|h| held.contains(&h.job_id)).collect())
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
    pub round: u32,
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
            "SELECT d.job_id, d.held_attempt, d.url, j.trace_id, COALESCE(d.held_round, d.round)
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
            round: r.get::<_, i32>(4).max(1) as u32,
            attempt: r.get::<_, i32>(1).max(1) as u32,
            url: r.get(2),
            trace_id: r.get(3),
        })
        .collect())
}

/// Ends the hold of deliveries whose messages were published again.
pub async fn unhold(tx: &Transaction<'_>, job_ids: &[&str]) -> anyhow::Result<()> {
    tx.execute(
        "UPDATE webhook_deliveries SET held_host = NULL, held_round = NULL, held_attempt = NULL,
             held_at = NULL
         WHERE job_id = ANY($1)",
        &[&job_ids],
    )
    .await
    .context("ending the holds")?;
    Ok(())
}
