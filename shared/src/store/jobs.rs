//! Import jobs: accepting one (with its items, registered for dispatch), reading and listing
//! them, counting finished videos and finishing the job (with its webhook delivery), and
//! cancelling one.

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use serde_json::Value;
use tokio_postgres::Row;

use super::webhooks::{self, RoundStarted};
use super::{dispatch, Checksum, ItemState, JobState, WebhookState};

/// One video of a batch being accepted.
#[derive(Debug, Clone)]
pub struct NewVideo {
    pub url: String,
    pub external_id: String,
    pub file_name: String,
    pub metadata: Value,
    /// Fixity values to check the stored file against.
    pub checksum: Checksum,
}

/// A batch being accepted.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub id: &'a str,
    pub project_id: i64,
    pub system_name: &'a str,
    pub webhook: Option<&'a str>,
    /// The caller's context, byte for byte.
    pub context: Option<&'a str>,
    /// The span that accepted it: its trace id is the job's, which every message and log
    /// line about the job carries; the job's first messages are its children.
    pub trace: Option<&'a crate::trace::TraceParent>,
    /// The job whose failed videos this one retries.
    pub retry_of: Option<&'a str>,
    pub videos: &'a [NewVideo],
}

/// Inserts the job in state `started`, its items in state `pending`, and registers it for
/// dispatch (`store::dispatch`), inside the caller's transaction.
pub async fn insert(tx: &Transaction<'_>, job: &NewJob<'_>) -> anyhow::Result<()> {
    let total = job.videos.len() as i32;
    tx.execute(
        "INSERT INTO jobs (id, project_id, system_name, webhook, context, state, total, pending,
                           trace_id, retry_of)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)",
        &[
            &job.id,
            &job.project_id,
            &job.system_name,
            &job.webhook,
            &job.context,
            &JobState::Started,
            &total,
            &job.trace.map(|t| t.trace_id.as_str()),
            &job.retry_of,
        ],
    )
    .await
    .context("inserting the job")?;
    let idx: Vec<i32> = (0..total).collect();
    let external_ids: Vec<&str> = job.videos.iter().map(|v| v.external_id.as_str()).collect();
    let urls: Vec<&str> = job.videos.iter().map(|v| v.url.as_str()).collect();
    let file_names: Vec<&str> = job.videos.iter().map(|v| v.file_name.as_str()).collect();
    let metadata: Vec<&Value> = job.videos.iter().map(|v| &v.metadata).collect();
    let sha256: Vec<Option<&str>> = job
        .videos
        .iter()
        .map(|v| v.checksum.sha256.as_deref())
        .collect();
    let md5: Vec<Option<&str>> = job
        .videos
        .iter()
        .map(|v| v.checksum.md5.as_deref())
        .collect();
    tx.execute(
        "INSERT INTO job_items (job_id, idx, external_id, url, file_name, metadata,
                                expected_sha256, expected_md5, state)
         SELECT $1, u.*, $9 FROM unnest($2::int4[], $3::text[], $4::text[], $5::text[],
                                        $6::jsonb[], $7::text[], $8::text[]) AS u",
        &[
            &job.id,
            &idx,
            &external_ids,
            &urls,
            &file_names,
            &metadata,
            &sha256,
            &md5,
            &ItemState::Pending,
        ],
    )
    .await
    .context("inserting the job's items")?;
    let traceparent = job.trace.map(crate::trace::TraceParent::header);
    dispatch::insert(
        tx,
        job.id,
        job.project_id,
        job.system_name,
        total,
        traceparent.as_deref(),
    )
    .await
}

/// A job's row without its videos.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: String,
    pub state: JobState,
    pub system_name: String,
    pub total: i32,
    pub pending: i32,
    pub imported: i32,
    pub skipped: i32,
    pub failed: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When its owner cancelled it.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// The job whose failed videos this one retries.
    pub retry_of: Option<String>,
    /// When retention removed its videos' rows and webhook history (`store::retention`):
    /// the row is a tombstone since, with its overview and times.
    pub pruned_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    /// Whether its videos' rows are gone or going: it was pruned, or `items` of its rows
    /// are left of its `total` (a job's items are only ever deleted by the pruner, which
    /// marks the job once the last batch of them is gone).
    pub fn pruned(&self, items: usize) -> bool {
        self.pruned_at.is_some() || items < self.total.max(0) as usize
    }
}

const JOB_COLUMNS: &str = "j.id, j.state, j.system_name, j.total, j.pending, j.imported,
    j.skipped, j.failed, j.started_at, j.finished_at, j.cancelled_at, j.retry_of, j.pruned_at";

impl JobRecord {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            state: row.get(1),
            system_name: row.get(2),
            total: row.get(3),
            pending: row.get(4),
            imported: row.get(5),
            skipped: row.get(6),
            failed: row.get(7),
            started_at: row.get(8),
            finished_at: row.get(9),
            cancelled_at: row.get(10),
            retry_of: row.get(11),
            pruned_at: row.get(12),
        }
    }
}

/// A job's webhook delivery as the status shows it.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub state: WebhookState,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The job `id` of the project, with its webhook delivery once there is one.
pub async fn find(
    client: &impl GenericClient,
    project_id: i64,
    id: &str,
) -> anyhow::Result<Option<(JobRecord, Option<DeliveryRecord>)>> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {JOB_COLUMNS}, d.state, d.attempts, d.last_error, d.delivered_at
                 FROM jobs j LEFT JOIN webhook_deliveries d ON d.job_id = j.id
                 WHERE j.id = $1 AND j.project_id = $2"
            ),
            &[&id, &project_id],
        )
        .await
        .context("reading the job")?;
    Ok(row.map(|row| {
        let delivery = row
            .get::<_, Option<WebhookState>>(13)
            .map(|state| DeliveryRecord {
                state,
                attempts: row.get(14),
                last_error: row.get(15),
                delivered_at: row.get(16),
            });
        (JobRecord::from_row(&row), delivery)
    }))
}

/// A fingerprint of everything the project's job `id` shows in its status (the job's row,
/// its webhook delivery, its videos' tries and the versions of their entries), read without
/// building the status: the status' `ETag`. `None` without such a job. A note about a
/// pending video committed out of start order can go unseen until the next change.
pub async fn fingerprint(
    client: &impl GenericClient,
    project_id: i64,
    id: &str,
) -> anyhow::Result<Option<String>> {
    let statement = client
        .prepare_cached(
            "SELECT md5(ROW(j.*)::text || ROW(d.*)::text || ROW(v.*)::text)
             FROM jobs j LEFT JOIN webhook_deliveries d ON d.job_id = j.id
             CROSS JOIN LATERAL (
                 SELECT sum(i.attempts), max(i.updated_at), sum(m.version)
                 FROM job_items i LEFT JOIN media_entries m ON m.id = i.media_id
                 WHERE i.job_id = j.id) v
             WHERE j.id = $1 AND j.project_id = $2",
        )
        .await
        .context("preparing the job fingerprint")?;
    let row = client
        .query_opt(&statement, &[&id, &project_id])
        .await
        .context("reading the job fingerprint")?;
    Ok(row.map(|r| r.get(0)))
}

/// What a retry of a job starts from: the job, its batch settings and its failed videos.
#[derive(Debug, Clone)]
pub struct RetrySource {
    pub job: JobRecord,
    /// Its videos' rows were removed by retention (or are being removed): nothing is left
    /// to retry.
    pub pruned: bool,
    pub webhook: Option<String>,
    /// The caller's context, byte for byte.
    pub context: Option<String>,
    /// The failed videos, in batch order, as they were submitted.
    pub videos: Vec<NewVideo>,
}

/// The project's job `id` with its failed videos (those failed by a cancel only when
/// `include_cancelled`); `None` without such a job.
pub async fn retry_source(
    client: &impl GenericClient,
    project_id: i64,
    id: &str,
    include_cancelled: bool,
) -> anyhow::Result<Option<RetrySource>> {
    let Some(row) = client
        .query_opt(
            &format!(
                "SELECT {JOB_COLUMNS}, j.webhook, j.context,
                        (SELECT count(*) FROM job_items i WHERE i.job_id = j.id)
                 FROM jobs j WHERE j.id = $1 AND j.project_id = $2"
            ),
            &[&id, &project_id],
        )
        .await
        .context("reading the job to retry")?
    else {
        return Ok(None);
    };
    let job = JobRecord::from_row(&row);
    let pruned = job.pruned(row.get::<_, i64>(15) as usize);
    let videos = if pruned {
        Vec::new()
    } else {
        client
            .query(
                "SELECT url, external_id, file_name, metadata, expected_sha256, expected_md5
                 FROM job_items
                 WHERE job_id = $1 AND state = $2 AND ($3 OR reason IS DISTINCT FROM $4)
                 ORDER BY idx",
                &[&id, &ItemState::Failed, &include_cancelled, &CANCELLED],
            )
            .await
            .context("reading the job's failed videos")?
            .iter()
            .map(|r| NewVideo {
                url: r.get(0),
                external_id: r.get(1),
                file_name: r.get(2),
                metadata: r.get(3),
                checksum: Checksum {
                    sha256: r.get(4),
                    md5: r.get(5),
                },
            })
            .collect()
    };
    Ok(Some(RetrySource {
        job,
        pruned,
        webhook: row.get(13),
        context: row.get(14),
        videos,
    }))
}

/// Which of a project's jobs to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<JobState>,
    pub system_name: Option<String>,
    /// Only jobs before this (start time, id) position.
    pub before: Option<(DateTime<Utc>, String)>,
    pub limit: i64,
}

/// The project's jobs, newest first.
pub async fn list(
    client: &impl GenericClient,
    project_id: i64,
    filter: &ListFilter,
) -> anyhow::Result<Vec<JobRecord>> {
    let (before_time, before_id) = filter.before.clone().unzip();
    let rows = client
        .query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs j
                 WHERE j.project_id = $1
                   AND ($2::text IS NULL OR j.state = $2)
                   AND ($3::text IS NULL OR j.system_name = $3)
                   AND ($4::timestamptz IS NULL OR (j.started_at, j.id) < ($4, $5))
                 ORDER BY j.started_at DESC, j.id DESC LIMIT $6"
            ),
            &[
                &project_id,
                &filter.state,
                &filter.system_name,
                &before_time,
                &before_id,
                &filter.limit,
            ],
        )
        .await
        .context("listing the jobs")?;
    Ok(rows.iter().map(JobRecord::from_row).collect())
}

/// A job's readiness for a redelivery request.
#[derive(Debug, Clone, Copy)]
pub struct Finish {
    pub finished: bool,
    pub has_webhook: bool,
    /// Retention removed its webhook delivery with its videos' rows.
    pub pruned: bool,
}

/// Whether the project's job `id` is finished and has a webhook; `None` without such a job.
pub async fn finish_of(
    client: &impl GenericClient,
    project_id: i64,
    id: &str,
) -> anyhow::Result<Option<Finish>> {
    let row = client
        .query_opt(
            "SELECT finished_at IS NOT NULL, webhook IS NOT NULL, pruned_at IS NOT NULL FROM jobs
             WHERE id = $1 AND project_id = $2",
            &[&id, &project_id],
        )
        .await
        .context("reading the job")?;
    Ok(row.map(|r| Finish {
        finished: r.get(0),
        has_webhook: r.get(1),
        pruned: r.get(2),
    }))
}

/// Finished videos of one job within a group commit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub done: i32,
    pub imported: i32,
    pub skipped: i32,
    pub failed: i32,
}

impl Counts {
    /// Counts one more video that ended in `state`.
    pub fn add(&mut self, state: ItemState) {
        match state {
            ItemState::Imported => self.imported += 1,
            ItemState::Skipped => self.skipped += 1,
            ItemState::Failed => self.failed += 1,
            // Not finished: nothing to count.
            ItemState::Pending => return,
        }
        self.done += 1;
    }
}

/// A job that the last of its videos just finished.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFinished {
    /// From acceptance to now.
    pub seconds: f64,
    /// The first round of its webhook delivery, to announce in the same transaction.
    pub webhook: Option<RoundStarted>,
}

/// Counts finished videos on their job and, when none is left pending, moves the job to
/// `success` or `failed` and creates its webhook delivery.
pub async fn count_finished(
    tx: &Transaction<'_>,
    job_id: &str,
    counts: &Counts,
) -> anyhow::Result<Option<JobFinished>> {
    let mut finished = count_finished_all(tx, &[(job_id, counts.clone())]).await?;
    Ok(finished.pop().and_then(|(_, done)| done))
}

/// [`count_finished`] for the jobs of a group, in one statement whatever their number: the
/// jobs are locked in id order first (so that concurrent groups do not deadlock), then
/// counted. Returns each job whose last video this was, with what finishing it did.
pub async fn count_finished_all(
    tx: &Transaction<'_>,
    counts: &[(&str, Counts)],
) -> anyhow::Result<Vec<(String, Option<JobFinished>)>> {
    let ids: Vec<&str> = counts.iter().map(|(id, _)| *id).collect();
    let column = |f: fn(&Counts) -> i32| counts.iter().map(|(_, c)| f(c)).collect::<Vec<i32>>();
    let (done, imported, skipped, failed) = (
        column(|c| c.done),
        column(|c| c.imported),
        column(|c| c.skipped),
        column(|c| c.failed),
    );
    let statement = tx
        .prepare_cached(
            "WITH locked AS MATERIALIZED (
                 SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE)
             UPDATE jobs j SET pending = j.pending - u.done, imported = j.imported + u.imported,
                 skipped = j.skipped + u.skipped, failed = j.failed + u.failed
             FROM unnest($1::text[], $2::int4[], $3::int4[], $4::int4[], $5::int4[])
                     AS u(id, done, imported, skipped, failed)
                 JOIN locked l ON l.id = u.id
             WHERE j.id = u.id
             RETURNING j.id, j.pending, j.webhook, j.failed,
                 extract(epoch FROM now() - j.started_at)::float8, j.trace_id",
        )
        .await
        .context("preparing the job counts")?;
    let rows = tx
        .query(&statement, &[&ids, &done, &imported, &skipped, &failed])
        .await
        .context("counting videos on their jobs")?;
    let mut results = Vec::with_capacity(rows.len());
    for job in rows {
        let job_id: String = job.get(0);
        let pending: i32 = job.get(1);
        if pending > 0 {
            results.push((job_id, None));
            continue;
        }
        tx.execute(
            "UPDATE jobs SET state = $2, finished_at = now() WHERE id = $1",
            &[&job_id, &JobState::finished_with(job.get(3))],
        )
        .await
        .context("finishing the job")?;
        let webhook = match job.get::<_, Option<String>>(2) {
            Some(url) => {
                let trace_id: Option<String> = job.get(5);
                webhooks::create(tx, &job_id, &url, trace_id.as_deref()).await?
            }
            None => None,
        };
        results.push((
            job_id,
            Some(JobFinished {
                seconds: job.get(4),
                webhook,
            }),
        ));
    }
    Ok(results)
}

/// The reason a cancelled video fails with.
pub const CANCELLED: &str = "cancelled";

/// What cancelling a job did.
#[derive(Debug, Clone)]
pub struct Cancellation {
    /// Videos that were still pending and now failed with reason `cancelled` (0 when the job
    /// had finished already).
    pub cancelled: i32,
    /// The job afterwards.
    pub job: JobRecord,
    /// The first round of its webhook delivery when this finished it, to announce in the
    /// same transaction.
    pub webhook: Option<RoundStarted>,
}

/// Cancels the project's job `id`: its pending videos fail with reason `cancelled` and the
/// job finishes (creating its webhook delivery) in the caller's transaction. Idempotent: a finished
/// job is left as it is. `None` without such a job. Items are locked in batch order before
/// the job row, the order group commits use, so the two never deadlock.
pub async fn cancel(
    tx: &Transaction<'_>,
    project_id: i64,
    id: &str,
) -> anyhow::Result<Option<Cancellation>> {
    let owned = tx
        .query_opt(
            "SELECT 1 FROM jobs WHERE id = $1 AND project_id = $2",
            &[&id, &project_id],
        )
        .await
        .context("reading the job to cancel")?;
    if owned.is_none() {
        return Ok(None);
    }
    let pending: Vec<i32> = tx
        .query(
            "SELECT idx FROM job_items WHERE job_id = $1 AND state = $2 ORDER BY idx FOR UPDATE",
            &[&id, &ItemState::Pending],
        )
        .await
        .context("locking the job's pending videos")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    dispatch::forget(tx, id).await?;
    let mut webhook = None;
    if !pending.is_empty() {
        tx.execute(
            "UPDATE job_items SET state = $3, reason = $4, updated_at = now()
             WHERE job_id = $1 AND idx = ANY($2)",
            &[&id, &pending, &ItemState::Failed, &CANCELLED],
        )
        .await
        .context("failing the cancelled videos")?;
        tx.execute("UPDATE jobs SET cancelled_at = now() WHERE id = $1", &[&id])
            .await
            .context("marking the job cancelled")?;
        let counts = Counts {
            done: pending.len() as i32,
            failed: pending.len() as i32,
            ..Counts::default()
        };
        webhook = count_finished(tx, id, &counts)
            .await?
            .and_then(|finished| finished.webhook);
    }
    let (job, _) = find(tx, project_id, id)
        .await?
        .context("the cancelled job disappeared")?;
    Ok(Some(Cancellation {
        cancelled: pending.len() as i32,
        job,
        webhook,
    }))
}
