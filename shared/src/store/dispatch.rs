//! Jobs whose videos are still to be handed to the fetch queue. The API adds a row with each
//! accepted job; a worker's dispatcher hands out ranges of videos in fair order and moves the
//! row's `next_idx` on in the same transaction, so a crash at worst hands a range out twice
//! (which the items' `pending` guard makes harmless) and never loses one.

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};

use super::model::{Checksum, Item, Validators};
use super::ItemState;

/// A job with videos not yet handed out.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub job_id: String,
    pub project_id: i64,
    pub system_name: String,
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
    system_name: &str,
    total: i32,
    traceparent: Option<&str>,
) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO dispatch (job_id, project_id, system_name, total, traceparent)
         VALUES ($1, $2, $3, $4, $5)",
        &[&job_id, &project_id, &system_name, &total, &traceparent],
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
            "SELECT job_id, project_id, system_name, next_idx, total, traceparent, served_at
             FROM dispatch
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
            system_name: r.get(2),
            next_idx: r.get(3),
            total: r.get(4),
            traceparent: r.get(5),
            served_at: r.get(6),
        })
        .collect())
}

/// Records that each job's videos `from..to` were handed out (`(job, from, to)`); forgets
/// jobs with none left. A row whose `next_idx` is no longer `from` was moved back meanwhile
/// ([`again`]) and is left as it is, so the video handed back is handed out next round.
pub async fn advance(tx: &Transaction<'_>, handed: &[(String, i32, i32)]) -> anyhow::Result<()> {
    if handed.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = handed.iter().map(|(j, _, _)| j.as_str()).collect();
    let from: Vec<i32> = handed.iter().map(|(_, f, _)| *f).collect();
    let next: Vec<i32> = handed.iter().map(|(_, _, n)| *n).collect();
    let statement = tx
        .prepare_cached(
            "UPDATE dispatch AS d SET next_idx = u.next_idx, served_at = clock_timestamp()
             FROM unnest($1::text[], $2::int4[], $3::int4[]) AS u(job_id, next_idx, from_idx)
             WHERE d.job_id = u.job_id AND d.next_idx = u.from_idx",
        )
        .await
        .context("preparing the dispatch update")?;
    tx.execute(&statement, &[&ids, &next, &from])
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

/// Hands video `idx` of a job out again (its message was of a retired version, which no
/// binary reads any more): the job's dispatch row is created, or moved back to `idx`, if the
/// video is still pending. Returns whether it was. Harmless when the video is handed out
/// twice: the items' `pending` guard makes the second message a no-op.
pub async fn again(
    client: &impl GenericClient,
    job_id: &str,
    idx: i32,
    traceparent: Option<&str>,
) -> anyhow::Result<bool> {
    let changed = client
        .execute(
            "INSERT INTO dispatch (job_id, project_id, system_name, total, next_idx, traceparent)
             SELECT j.id, j.project_id, j.system_name, j.total, i.idx, $3
             FROM jobs j JOIN job_items i ON i.job_id = j.id AND i.idx = $2 AND i.state = $4
             WHERE j.id = $1
             ON CONFLICT (job_id) DO UPDATE
                 SET next_idx = LEAST(dispatch.next_idx, EXCLUDED.next_idx)",
            &[&job_id, &idx, &traceparent, &ItemState::Pending],
        )
        .await
        .context("handing the video out again")?;
    Ok(changed == 1)
}

/// Stops dispatching the job (it was cancelled).
pub async fn forget(client: &impl GenericClient, job_id: &str) -> anyhow::Result<()> {
    client
        .execute("DELETE FROM dispatch WHERE job_id = $1", &[&job_id])
        .await
        .context("forgetting the job's dispatch")?;
    Ok(())
}

/// The still-pending videos of `ranges` (a job and its videos `from..to`), with the
/// validators of their existing entries (none for an entry marked damaged), in (job, idx)
/// order: what the fetch messages carry so that the worker need not load them.
pub async fn videos(tx: &Transaction<'_>, ranges: &[(&Waiting, i32)]) -> anyhow::Result<Vec<Item>> {
    let jobs: Vec<&str> = ranges.iter().map(|(w, _)| w.job_id.as_str()).collect();
    let projects: Vec<i64> = ranges.iter().map(|(w, _)| w.project_id).collect();
    let systems: Vec<&str> = ranges.iter().map(|(w, _)| w.system_name.as_str()).collect();
    let from: Vec<i32> = ranges.iter().map(|(w, _)| w.next_idx).collect();
    let to: Vec<i32> = ranges.iter().map(|(_, end)| *end).collect();
    // Not a prepared statement: a plan cached while the library was small would scan it
    // whole once it is large; this one is planned with the tables as they are.
    let rows = tx
        .query(
            "SELECT i.job_id, i.idx, r.project_id, r.system_name, i.external_id, i.url,
                    i.file_name, i.metadata, m.original_url = i.url, m.source_etag,
                    m.source_last_modified, i.expected_sha256, i.expected_md5
             FROM unnest($1::text[], $2::int8[], $3::text[], $4::int4[], $5::int4[])
                 AS r(job_id, project_id, system_name, lo, hi)
             CROSS JOIN LATERAL (
                 SELECT * FROM job_items
                 WHERE job_id = r.job_id AND idx >= r.lo AND idx < r.hi AND state = $6
                 -- Not flattened either: one index range per job. Flattened, a round of many
                 -- jobs was planned as a scan of every item (52 ms instead of 2 with 100 jobs
                 -- when the statistics were taken before the batches arrived).
                 OFFSET 0
             ) i
             LEFT JOIN LATERAL (
                 SELECT original_url, source_etag, source_last_modified FROM media_entries
                 WHERE project_id = r.project_id AND system_name = r.system_name
                     AND external_id = i.external_id
                     -- A damaged file is downloaded again: no conditional request.
                     AND damaged_at IS NULL
                 OFFSET 0 -- not flattened: one point lookup per video, whatever the statistics
             ) m ON true
             ORDER BY i.job_id, i.idx",
            &[&jobs, &projects, &systems, &from, &to, &ItemState::Pending],
        )
        .await
        .context("reading the videos to hand out")?;
    Ok(rows
        .iter()
        .map(|r| {
            let known = Validators {
                etag: r.get(9),
                last_modified: r.get(10),
            };
            let same_url = r.get::<_, Option<bool>>(8) == Some(true);
            Item {
                job_id: r.get(0),
                idx: r.get(1),
                project_id: r.get(2),
                system_name: r.get(3),
                external_id: r.get(4),
                url: r.get(5),
                file_name: r.get(6),
                metadata: r.get(7),
                state: ItemState::Pending,
                known: (same_url && !known.is_empty()).then_some(known),
                checksum: Checksum {
                    sha256: r.get(11),
                    md5: r.get(12),
                },
            }
        })
        .collect())
}
