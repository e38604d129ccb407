//! Jobs whose videos are still to be handed to the fetch queue. The API adds a row with each
//! accepted job; a worker's dispatcher hands out ranges of videos in fair order and moves the
//! row's `next_idx` on in the same transaction, so a crash at worst hands a range out twice
//! (which the items' `pending` guard makes harmless) and never loses one.

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};

/// A job with videos not yet handed out.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub job_id: String,
    pub project_id: i64,
    /// The next video to hand out.
    pub next_idx: i32,
    pub total: i32,
    /// The W3C trace context its messages are published with.
    pub traceparent: Option<String>,
    /// When it last got messages (`None`: never).
    pub served_at: Option<DateTime<Utc>>,
}

impl Waiting {
    /// Videos still to hand out.
    pub fn remaining(&self) -> u32 {
        (self.total - self.next_idx).max(0) as u32
    }
}

/// Registers an accepted job's videos for dispatch, inside the caller's transaction.
pub async fn insert(
    tx: &Transaction<'_>,
    job_id: &str,
    project_id: i64,
    total: i32,
    traceparent: Option<&str>,
) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO dispatch (job_id, project_id, total, traceparent) VALUES ($1, $2, $3, $4)",
        &[&job_id, &project_id, &total, &traceparent],
    )
    .await
    .context("registering the job for dispatch")?;
    Ok(())
}

/// Takes the dispatcher's lock for this transaction; `false` when another dispatcher holds
/// it (one dispatches at a time, so the order stays fair across workers).
pub async fn lock(tx: &Transaction<'_>) -> anyhow::Result<bool> {
    const DISPATCH_LOCK: i64 = 0x0064_6973_7061;
    Ok(tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&DISPATCH_LOCK])
        .await
        .context("taking the dispatcher's lock")?
        .get(0))
}

/// Up to `limit` waiting jobs, least recently served first.
pub async fn waiting(tx: &Transaction<'_>, limit: i64) -> anyhow::Result<Vec<Waiting>> {
    let statement = tx
        .prepare_cached(
            "SELECT job_id, project_id, next_idx, total, traceparent, served_at FROM dispatch
             ORDER BY served_at NULLS FIRST, created_at LIMIT $1",
        )
        .await
        .context("preparing the dispatch read")?;
    let rows = tx
        .query(&statement, &[&limit])
        .await
        .context("reading the jobs waiting for dispatch")?;
    Ok(rows
        .iter()
        .map(|r| Waiting {
            job_id: r.get(0),
            project_id: r.get(1),
            next_idx: r.get(2),
            total: r.get(3),
            traceparent: r.get(4),
            served_at: r.get(5),
        })
        .collect())
}

/// Records that each job's videos up to `next_idx` were handed out; forgets jobs with none
/// left.
pub async fn advance(tx: &Transaction<'_>, handed: &[(String, i32)]) -> anyhow::Result<()> {
    if handed.is_empty() {
        return Ok(());
    }
    let (ids, next): (Vec<&str>, Vec<i32>) = handed.iter().map(|(j, n)| (j.as_str(), *n)).unzip();
    let statement = tx
        .prepare_cached(
            "UPDATE dispatch AS d SET next_idx = u.next_idx, served_at = clock_timestamp()
             FROM unnest($1::text[], $2::int4[]) AS u(job_id, next_idx)
             WHERE d.job_id = u.job_id",
        )
        .await
        .context("preparing the dispatch update")?;
    tx.execute(&statement, &[&ids, &next])
        .await
        .context("moving the dispatched jobs on")?;
    tx.execute(
        "DELETE FROM dispatch WHERE job_id = ANY($1) AND next_idx >= total",
        &[&ids],
    )
    .await
    .context("forgetting fully dispatched jobs")?;
    Ok(())
}

/// Stops dispatching the job (it was cancelled).
pub async fn forget(client: &impl GenericClient, job_id: &str) -> anyhow::Result<()> {
    client
        .execute("DELETE FROM dispatch WHERE job_id = $1", &[&job_id])
        .await
        .context("forgetting the job's dispatch")?;
    Ok(())
}
