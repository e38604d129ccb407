//! Idempotency keys: a retried POST with the same key and body finds the job the first one
//! created, for 24 hours.

use anyhow::Context;
use deadpool_postgres::Transaction;

/// What an Idempotency-Key led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is now this request's: go on and create the job.
    Claimed,
    /// The same key and body were accepted within 24 hours as this job.
    Replay(String),
    /// The key was used within 24 hours with another body.
    Mismatch,
}

/// How long a key answers with its first job: 24 hours, in every statement below. Once it
/// is over the key does nothing (the next request with it takes it over), so the pruner
/// (`store::retention`) deletes it.
pub const WINDOW_HOURS: i32 = 24;

/// Takes `key` for `job_id`, or finds the job of an earlier request with the same key. A
/// concurrent request with the same key waits here for the first to commit.
pub async fn claim(
    tx: &Transaction<'_>,
    project_id: i64,
    key: &str,
    request_hash: &str,
    job_id: &str,
) -> anyhow::Result<KeyClaim> {
    // Twice at most: a key found by the insert can be deleted by the pruner (its window
    // was over) before it is read; then the second insert takes it.
    for _ in 0..2 {
        let claimed = tx
            .execute(
                "INSERT INTO idempotency_keys (project_id, key, request_hash, job_id)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (project_id, key) DO NOTHING",
                &[&project_id, &key, &request_hash, &job_id],
            )
            .await
            .context("claiming the idempotency key")?;
        if claimed == 1 {
            return Ok(KeyClaim::Claimed);
        }
        let Some(row) = tx
            .query_opt(
                "SELECT request_hash, job_id, created_at > now() - make_interval(hours => $3)
                 FROM idempotency_keys WHERE project_id = $1 AND key = $2 FOR UPDATE",
                &[&project_id, &key, &WINDOW_HOURS],
            )
            .await
            .context("reading the idempotency key")?
        else {
            continue;
        };
        if !row.get::<_, bool>(2) {
            // Older than the window: the key is free again.
            tx.execute(
                "UPDATE idempotency_keys SET request_hash = $3, job_id = $4, created_at = now()
                 WHERE project_id = $1 AND key = $2",
                &[&project_id, &key, &request_hash, &job_id],
            )
            .await
            .context("renewing the idempotency key")?;
            return Ok(KeyClaim::Claimed);
        }
        if row.get::<_, String>(0) != request_hash {
            return Ok(KeyClaim::Mismatch);
        }
        return Ok(KeyClaim::Replay(row.get(1)));
    }
    anyhow::bail!(
        "the idempotency key {key:?} was deleted twice while being claimed; send the request again"
    )
}
