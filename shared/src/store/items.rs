//! Job items, one per video: whether one is still pending, noting a failed try or a wait,
//! writing a group's outcomes, and reading a job's items for its status.

use std::collections::HashSet;

use anyhow::Context;
use deadpool_postgres::{GenericClient, Transaction};

use super::{Checksum, ItemState};

/// Whether item `idx` of the job is still pending (not finished, failed or cancelled).
pub async fn is_pending(
    client: &impl GenericClient,
    job_id: &str,
    idx: i32,
) -> anyhow::Result<bool> {
    let statement = client
        .prepare_cached("SELECT 1 FROM job_items WHERE job_id = $1 AND idx = $2 AND state = $3")
        .await
        .context("preparing the item check")?;
    Ok(client
        .query_opt(&statement, &[&job_id, &idx, &ItemState::Pending])
        .await
        .context("checking the item")?
        .is_some())
}

/// For each `(job, idx)` of `items`, in order, whether that item is still pending: the
/// check of [`is_pending`] for many videos in one round trip.
pub async fn pending_among(
    client: &impl GenericClient,
    items: &[(String, i32)],
) -> anyhow::Result<Vec<bool>> {
    let (jobs, idxs): (Vec<&str>, Vec<i32>) = items.iter().map(|(j, i)| (j.as_str(), *i)).unzip();
    // One index lookup per item, whatever the planner thinks of the arrays' sizes.
    let statement = client
        .prepare_cached(
            "SELECT i.idx IS NOT NULL
             FROM unnest($1::text[], $2::int4[]) WITH ORDINALITY AS u(job_id, idx, n)
             LEFT JOIN LATERAL (
                 SELECT idx FROM job_items
                 WHERE job_id = u.job_id AND idx = u.idx AND state = $3
                 -- Not flattened, so never hashed: as an EXISTS, a plan made while the table
                 -- was small hashed every pending item on each call (1.8 ms instead of 0.1).
                 OFFSET 0
             ) i ON true
             ORDER BY u.n",
        )
        .await
        .context("preparing the items check")?;
    let rows = client
        .query(&statement, &[&jobs, &idxs, &ItemState::Pending])
        .await
        .context("checking the items")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Records a failed try of a still-pending item that will be tried again later.
pub async fn note_retry(
    client: &impl GenericClient,
    job_id: &str,
    idx: i32,
    reason: &str,
) -> anyhow::Result<()> {
    client
        .execute(
            "UPDATE job_items SET attempts = attempts + 1, last_error = $3, updated_at = now()
             WHERE job_id = $1 AND idx = $2 AND state = $4",
            &[&job_id, &idx, &reason, &ItemState::Pending],
        )
        .await
        .context("noting the failed try")?;
    Ok(())
}

/// Says why a still-pending item waits without a failed try of its own (its source host
/// asked for a pause), so that its status shows the reason.
pub async fn note_waiting(
    client: &impl GenericClient,
    job_id: &str,
    idx: i32,
    reason: &str,
) -> anyhow::Result<()> {
    client
        .execute(
            "UPDATE job_items SET last_error = $3, updated_at = now()
             WHERE job_id = $1 AND idx = $2 AND state = $4",
            &[&job_id, &idx, &reason, &ItemState::Pending],
        )
        .await
        .context("noting why the video waits")?;
    Ok(())
}

/// Locks those of the group's items (`job_id`, `idx` pairs) that are still pending, in
/// (job, idx) order so that concurrent groups do not deadlock, and returns them; the others
/// were finished already by another delivery of the same message.
pub(super) async fn lock_pending(
    tx: &Transaction<'_>,
    keys: &[(&str, i32)],
) -> anyhow::Result<HashSet<(String, i32)>> {
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    let (job_ids, idx): (Vec<&str>, Vec<i32>) = sorted.into_iter().unzip();
    // One index lookup per item, locked in the arrays' (sorted) order: joined, a plan made
    // while the table was small scanned every item on each call.
    let statement = tx
        .prepare_cached(
            "SELECT i.job_id, i.idx
             FROM unnest($1::text[], $2::int4[]) WITH ORDINALITY AS k(job_id, idx, n)
             CROSS JOIN LATERAL (
                 SELECT job_id, idx FROM job_items
                 WHERE job_id = k.job_id AND idx = k.idx AND state = $3
                 OFFSET 0 FOR UPDATE
             ) i
             ORDER BY k.n",
        )
        .await
        .context("preparing the item lock")?;
    Ok(tx
        .query(&statement, &[&job_ids, &idx, &ItemState::Pending])
        .await
        .context("locking the group's items")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// A group's finished items, written with one statement.
#[derive(Default)]
pub(super) struct Finished {
    job_ids: Vec<String>,
    idx: Vec<i32>,
    states: Vec<ItemState>,
    reasons: Vec<Option<String>>,
    media_ids: Vec<Option<String>>,
}

impl Finished {
    /// Adds one item's final state.
    pub(super) fn push(
        &mut self,
        job_id: &str,
        idx: i32,
        state: ItemState,
        reason: Option<String>,
        media_id: Option<String>,
    ) {
        self.job_ids.push(job_id.to_string());
        self.idx.push(idx);
        self.states.push(state);
        self.reasons.push(reason);
        self.media_ids.push(media_id);
    }

    /// Writes them all.
    pub(super) async fn write(&self, tx: &Transaction<'_>) -> anyhow::Result<()> {
        if self.idx.is_empty() {
            return Ok(());
        }
        let statement = tx
            .prepare_cached(
                "UPDATE job_items AS i SET state = u.state, reason = u.reason,
                     media_id = u.media_id, updated_at = now()
                 FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[])
                     AS u(job_id, idx, state, reason, media_id)
                 WHERE i.job_id = u.job_id AND i.idx = u.idx",
            )
            .await
            .context("preparing the item update")?;
        tx.execute(
            &statement,
            &[
                &self.job_ids,
                &self.idx,
                &self.states,
                &self.reasons,
                &self.media_ids,
            ],
        )
        .await
        .context("marking the group's items")?;
        Ok(())
    }
}

/// One video of a job as the status shows it, with its entry's file facts.
#[derive(Debug, Clone)]
pub struct ItemRecord {
    pub state: ItemState,
    pub reason: Option<String>,
    pub external_id: String,
    /// The `fileName` it was submitted with.
    pub file_name: String,
    pub url: String,
    /// SHA-256 of its entry's file.
    pub sha256: Option<String>,
    /// MD5 of its entry's file.
    pub md5: Option<String>,
    /// The fixity values it was submitted with.
    pub checksum: Checksum,
    pub media_id: Option<String>,
    pub mime_type: Option<String>,
    pub size: Option<i64>,
    /// Why the last try failed, while the video is still pending.
    pub last_error: Option<String>,
    pub duration_seconds: Option<f64>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub codec: Option<String>,
}

/// Every item of the job, in batch order.
pub async fn of_job(client: &impl GenericClient, job_id: &str) -> anyhow::Result<Vec<ItemRecord>> {
    let rows = client
        .query(
            "SELECT i.state, i.reason, i.external_id, i.url, i.media_id, m.mime_type, m.asset_size,
                    i.last_error, m.duration_seconds, m.width, m.height, m.video_codec,
                    i.file_name, m.sha256, m.md5, i.expected_sha256, i.expected_md5
             FROM job_items i LEFT JOIN media_entries m ON m.id = i.media_id
             WHERE i.job_id = $1 ORDER BY i.idx",
            &[&job_id],
        )
        .await
        .context("reading the job's videos")?;
    Ok(rows
        .iter()
        .map(|row| ItemRecord {
            state: row.get(0),
            reason: row.get(1),
            external_id: row.get(2),
            url: row.get(3),
            media_id: row.get(4),
            mime_type: row.get(5),
            size: row.get(6),
            last_error: row.get(7),
            duration_seconds: row.get(8),
            width: row.get(9),
            height: row.get(10),
            codec: row.get(11),
            file_name: row.get(12),
            sha256: row.get(13),
            md5: row.get(14),
            checksum: Checksum {
                sha256: row.get(15),
                md5: row.get(16),
            },
        })
        .collect())
}
