//! Retention: a job finished before the cutoff (`retention.finished_jobs_secs` ago) loses
//! its videos' rows (`job_items`), its webhook delivery and attempts and its dispatch row;
//! its row stays as a tombstone (`pruned_at` set, its overview, its times, its caller's
//! `context` dropped), so its status answers 410 with what is left and the job list and the
//! daily-limit window (which count jobs, not items) are unchanged. Idempotency keys whose
//! 24-hour window is over are deleted (they already do nothing). Media entries are never
//! touched: they are what users keep.
//!
//! Every call here is one short statement or transaction over a bounded set of rows: the
//! worker's pruner (`worker/src/prune.rs`) sizes and paces them, one pruner at a time
//! (`locks::PRUNE_LOCK`, whose connection runs every statement of the pruner).

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};

use super::{idempotency, WebhookState};

/// Rows removed, by table (`jobs`: rows made tombstones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Job rows made tombstones.
    pub jobs: u64,
    /// Videos' rows deleted.
    pub job_items: u64,
    /// Webhook attempts deleted.
    pub webhook_attempts: u64,
    /// Webhook deliveries deleted.
    pub webhook_deliveries: u64,
    /// Dispatch rows deleted.
    pub dispatch: u64,
    /// Idempotency keys deleted (their window over).
    pub idempotency_keys: u64,
}

impl Removed {
    /// The tables, as the metrics label them (`jobs`: rows made tombstones).
    pub const TABLES: [&'static str; 6] = [
        "jobs",
        "job_items",
        "webhook_attempts",
        "webhook_deliveries",
        "dispatch",
        "idempotency_keys",
    ];

    /// Each table's count, in the order of [`Removed::TABLES`].
    pub fn by_table(&self) -> [(&'static str, u64); 6] {
        let counts = [
            self.jobs,
            self.job_items,
            self.webhook_attempts,
            self.webhook_deliveries,
            self.dispatch,
            self.idempotency_keys,
        ];
        let mut out = [("", 0); 6];
        for (slot, (table, count)) in out.iter_mut().zip(Self::TABLES.iter().zip(counts)) {
            *slot = (table, count);
        }
        out
    }

    /// Rows deleted, tombstones left out.
    pub fn deleted(&self) -> u64 {
        self.job_items
            + self.webhook_attempts
            + self.webhook_deliveries
            + self.dispatch
            + self.idempotency_keys
    }
}

impl std::ops::AddAssign for Removed {
    fn add_assign(&mut self, other: Removed) {
        self.jobs += other.jobs;
        self.job_items += other.job_items;
        self.webhook_attempts += other.webhook_attempts;
        self.webhook_deliveries += other.webhook_deliveries;
        self.dispatch += other.dispatch;
        self.idempotency_keys += other.idempotency_keys;
    }
}

/// A finished job whose rows may be removed, with its number of videos (its item rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The job.
    pub job_id: String,
    /// Its number of videos: the item rows it has, unless a batch removed some already.
    pub total: i32,
}

/// The database's clock: every pruner measures its cutoff by it, whatever its own.
pub async fn now(client: &impl GenericClient) -> anyhow::Result<DateTime<Utc>> {
    Ok(client
        .query_one("SELECT now()", &[])
        .await
        .context("reading the database's clock")?
        .get(0))
}

/// Up to `limit` jobs finished before `cutoff` and not pruned yet, oldest first. A job
/// whose webhook is still being delivered is left for later (its retries read the job's
/// failed videos); it is pruned once the delivery ends. Reads the `jobs_retained` index,
/// which holds only finished jobs not pruned yet.
pub async fn candidates(
    client: &impl GenericClient,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> anyhow::Result<Vec<Candidate>> {
    let rows = client
        .query(
            "SELECT j.id, j.total FROM jobs j
             WHERE j.finished_at IS NOT NULL AND j.pruned_at IS NULL AND j.finished_at < $1
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                               WHERE d.job_id = j.id AND d.state = $3)
             ORDER BY j.finished_at LIMIT $2",
            &[&cutoff, &limit, &WebhookState::Pending],
        )
        .await
        .context("reading the finished jobs to prune")?;
    Ok(rows
        .iter()
        .map(|r| Candidate {
            job_id: r.get(0),
            total: r.get(1),
        })
        .collect())
}

/// Deletes the item rows `from..to` (by `idx`) of one job: the batches of a job too large
/// to go in one. The job is marked pruned by [`prune_jobs`] once the last of them is gone;
/// until then its status sees fewer items than its total and answers as pruned already.
/// The first batch of such a job goes through [`start_items`] instead.
pub async fn prune_items(
    client: &impl GenericClient,
    job_id: &str,
    from: i32,
    to: i32,
) -> anyhow::Result<u64> {
    client
        .execute(
            "DELETE FROM job_items WHERE job_id = $1 AND idx >= $2 AND idx < $3",
            &[&job_id, &from, &to],
        )
        .await
        .context("deleting a job's videos")
}

/// The first batch of a job too large for one, in the caller's transaction: its webhook
/// delivery is locked first and, unless a redelivery made it pending again since the job
/// was chosen (`None` then: the job is left as it is), removed with its attempts and its
/// dispatch row before any of its videos go. A redelivery request from then on finds no
/// delivery and answers 410, so no webhook is ever sent with part of its videos gone.
pub async fn start_items(
    tx: &Transaction<'_>,
    job_id: &str,
    from: i32,
    to: i32,
) -> anyhow::Result<Option<Removed>> {
    let delivery = tx
        .query_opt(
            "SELECT state FROM webhook_deliveries WHERE job_id = $1 FOR UPDATE",
            &[&job_id],
        )
        .await
        .context("locking the job's webhook delivery")?;
    if delivery.is_some_and(|r| r.get::<_, WebhookState>(0) == WebhookState::Pending) {
        return Ok(None);
    }
    let ids = &[job_id];
    let side = delivery_and_dispatch(tx, ids).await?;
    Ok(Some(Removed {
        job_items: prune_items(tx, job_id, from, to).await?,
        ..side
    }))
}

/// Removes the jobs' webhook attempts and delivery and their dispatch rows: what a job has
/// besides its videos and its row.
async fn delivery_and_dispatch(tx: &Transaction<'_>, ids: &[&str]) -> anyhow::Result<Removed> {
    Ok(Removed {
        webhook_attempts: each(
            tx,
            "DELETE FROM webhook_attempts WHERE job_id = ANY($1)",
            ids,
            "webhook attempts",
        )
        .await?,
        webhook_deliveries: each(
            tx,
            "DELETE FROM webhook_deliveries WHERE job_id = ANY($1)",
            ids,
            "webhook deliveries",
        )
        .await?,
        dispatch: each(
            tx,
            "DELETE FROM dispatch WHERE job_id = ANY($1)",
            ids,
            "dispatch rows",
        )
        .await?,
        ..Removed::default()
    })
}

/// Removes, in the caller's transaction, the rows of whole jobs (their videos, webhook
/// delivery and attempts, dispatch row) and makes each job's row a tombstone. A job whose
/// delivery went back to pending since it was chosen (a redelivery request) is left out:
/// its delivery rows are locked first, so a redelivery that comes later waits for this
/// transaction and then finds no delivery (the API answers 410).
pub async fn prune_jobs(tx: &Transaction<'_>, job_ids: &[&str]) -> anyhow::Result<Removed> {
    let delivering: Vec<String> = tx
        .query(
            "SELECT job_id, state FROM webhook_deliveries WHERE job_id = ANY($1)
             ORDER BY job_id FOR UPDATE",
            &[&job_ids],
        )
        .await
        .context("locking the jobs' webhook deliveries")?
        .iter()
        .filter(|r| r.get::<_, WebhookState>(1) == WebhookState::Pending)
        .map(|r| r.get(0))
        .collect();
    let ids: Vec<&str> = job_ids
        .iter()
        .copied()
        .filter(|id| !delivering.iter().any(|d| d == id))
        .collect();
    if ids.is_empty() {
        return Ok(Removed::default());
    }
    let ids = &ids;
    let job_items = each(
        tx,
        "DELETE FROM job_items WHERE job_id = ANY($1)",
        ids,
        "videos",
    )
    .await?;
    let side = delivery_and_dispatch(tx, ids).await?;
    Ok(Removed {
        job_items,
        // The tombstone: counts, times, ids and settings stay; the caller's context (up to
        // 8 KiB) is only ever sent with the webhook, which is gone.
        jobs: each(
            tx,
            "UPDATE jobs SET pruned_at = now(), context = NULL
             WHERE id = ANY($1) AND pruned_at IS NULL",
            ids,
            "rows",
        )
        .await?,
        idempotency_keys: 0,
        ..side
    })
}

/// Runs `sql` for the jobs `ids`; the rows it changed.
async fn each(tx: &Transaction<'_>, sql: &str, ids: &[&str], what: &str) -> anyhow::Result<u64> {
    tx.execute(sql, &[&ids])
        .await
        .with_context(|| format!("pruning the jobs' {what}"))
}

/// Deletes up to `limit` idempotency keys whose window is over; returns how many.
pub async fn expired_keys(client: &impl GenericClient, limit: i64) -> anyhow::Result<u64> {
    client
        .execute(
            "DELETE FROM idempotency_keys k
             USING (SELECT project_id, key FROM idempotency_keys
                    WHERE created_at < now() - make_interval(hours => $2)
                    LIMIT $1) old
             WHERE k.project_id = old.project_id AND k.key = old.key
               -- a request may have taken the key over meanwhile
               AND k.created_at < now() - make_interval(hours => $2)",
            &[&limit, &idempotency::WINDOW_HOURS],
        )
        .await
        .context("deleting expired idempotency keys")
}

/// Seconds since the oldest finished job whose rows are kept finished (leaving out jobs
/// whose webhook is still being delivered, which the pruner waits for); `None` when there
/// is none.
pub async fn oldest_kept(client: &impl GenericClient) -> anyhow::Result<Option<f64>> {
    let row = client
        .query_opt(
            "SELECT extract(epoch FROM now() - j.finished_at)::float8 FROM jobs j
             WHERE j.finished_at IS NOT NULL AND j.pruned_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                               WHERE d.job_id = j.id AND d.state = $1)
             ORDER BY j.finished_at LIMIT 1",
            &[&WebhookState::Pending],
        )
        .await
        .context("reading the oldest finished job kept")?;
    Ok(row.map(|r| r.get(0)))
}
