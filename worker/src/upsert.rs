//! The one transaction that records a video's outcome: upsert the media-library entry, mark
//! the item, count it on the job and, with the job's last item, finish the job and queue its
//! webhook. Guarded by the item's `pending` state, so redelivered messages change nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use deadpool_postgres::{Pool, Transaction};
use serde_json::Value;
use video_import_shared::messages::DeliverWebhook;
use video_import_shared::{ids, outbox, queue};

use crate::fetch::{Downloaded, Validators};

/// A video of a job, as the worker needs it.
#[derive(Debug, Clone)]
pub struct Item {
    pub job_id: String,
    pub idx: i32,
    pub project_id: i64,
    pub system_name: String,
    pub external_id: String,
    pub url: String,
    pub file_name: String,
    pub metadata: Value,
    pub pending: bool,
    /// Validators of the existing entry's source, when it came from this same URL.
    pub known: Option<Validators>,
}

/// The immutable facts of a job that every one of its videos needs.
#[derive(Debug, Clone)]
pub struct JobFacts {
    pub project_id: i64,
    pub system_name: String,
}

/// Remembers job facts, so that loading a video does not read the job's row, which every
/// group commit of that job updates.
#[derive(Default)]
pub struct JobCache {
    jobs: Mutex<HashMap<String, JobFacts>>,
}

impl JobCache {
    /// Most jobs remembered; beyond it the cache starts afresh.
    const CAPACITY: usize = 10_000;

    async fn facts(
        &self,
        client: &deadpool_postgres::Client,
        job_id: &str,
    ) -> anyhow::Result<Option<JobFacts>> {
        if let Some(facts) = self.jobs.lock().expect("job cache lock").get(job_id) {
            return Ok(Some(facts.clone()));
        }
        let statement = client
            .prepare_cached("SELECT project_id, system_name FROM jobs WHERE id = $1")
            .await?;
        let Some(row) = client.query_opt(&statement, &[&job_id]).await? else {
            return Ok(None);
        };
        let facts = JobFacts {
            project_id: row.get(0),
            system_name: row.get(1),
        };
        let mut jobs = self.jobs.lock().expect("job cache lock");
        if jobs.len() >= Self::CAPACITY {
            jobs.clear();
        }
        jobs.insert(job_id.to_string(), facts.clone());
        Ok(Some(facts))
    }
}

/// Loads an item; `None` when the job no longer exists.
pub async fn load(
    pool: &Pool,
    cache: &JobCache,
    job_id: &str,
    idx: i32,
) -> anyhow::Result<Option<Item>> {
    let client = pool.get().await?;
    let Some(job) = cache.facts(&client, job_id).await? else {
        return Ok(None);
    };
    let statement = client
        .prepare_cached(
            // LATERAL keeps the entry a point lookup whatever plan the prepared statement
            // gets (a generic plan of a plain join scanned the project's entries).
            "SELECT i.external_id, i.url, i.file_name, i.metadata, i.state = 'pending',
                    m.original_url = i.url, m.source_etag, m.source_last_modified
             FROM job_items i
             LEFT JOIN LATERAL (
                 SELECT original_url, source_etag, source_last_modified FROM media_entries
                 WHERE project_id = $3 AND system_name = $4 AND external_id = i.external_id
             ) m ON true
             WHERE i.job_id = $1 AND i.idx = $2",
        )
        .await?;
    let row = client
        .query_opt(
            &statement,
            &[&job_id, &idx, &job.project_id, &job.system_name],
        )
        .await?;
    Ok(row.map(|r| {
        let known = Validators {
            etag: r.get(6),
            last_modified: r.get(7),
        };
        let same_url = r.get::<_, Option<bool>>(5) == Some(true);
        Item {
            job_id: job_id.to_string(),
            idx,
            project_id: job.project_id,
            system_name: job.system_name,
            external_id: r.get(0),
            url: r.get(1),
            file_name: r.get(2),
            metadata: r.get(3),
            pending: r.get(4),
            known: (same_url && !known.is_empty()).then_some(known),
        }
    }))
}

/// Records a transient failure that will be tried again later.
pub async fn note_retry(pool: &Pool, item: &Item, reason: &str) -> anyhow::Result<()> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE job_items SET attempts = attempts + 1, last_error = $3, updated_at = now()
             WHERE job_id = $1 AND idx = $2 AND state = 'pending'",
            &[&item.job_id, &item.idx, &reason],
        )
        .await?;
    Ok(())
}

/// Marks a job's webhook failed after its message was dead-lettered.
pub async fn fail_webhook(pool: &Pool, job_id: &str) -> anyhow::Result<()> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE webhook_deliveries SET state = 'failed', last_error = $2
             WHERE job_id = $1 AND state = 'pending'",
            &[
                &job_id,
                &format!(
                    "set aside (dead-lettered) after {} deliveries that never finished",
                    queue::DELIVERY_LIMIT
                ),
            ],
        )
        .await?;
    Ok(())
}

/// Whether a committed entry points at `key` (so it must not be deleted).
pub async fn is_referenced(pool: &Pool, key: &str) -> anyhow::Result<bool> {
    let client = pool.get().await?;
    Ok(client
        .query_opt("SELECT 1 FROM media_entries WHERE asset_key = $1", &[&key])
        .await?
        .is_some())
}

/// What happened to the video.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A new copy is stored at `asset.key`.
    Downloaded(Box<Downloaded>),
    /// The source said the stored copy is current (HTTP 304).
    Unchanged,
    Failed(String),
}

/// What the transaction did for one video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Another delivery of the same message got there first.
    AlreadyDone,
    /// The item ended in `state`.
    Done {
        state: &'static str,
        /// It was the job's last item.
        job_finished: bool,
        /// The entry now points at the downloaded asset (otherwise it may be deleted).
        asset_used: bool,
        /// The asset this one replaced, to delete now that the commit is done.
        replaced_key: Option<String>,
    },
}

/// Records the outcomes of several videos in one transaction (one commit, one update per
/// job); see the module doc. Touches no storage: the caller removes what the results say
/// is unused. Rows are locked in a fixed order (items, then jobs) so that concurrent groups
/// do not deadlock.
pub async fn record(pool: &Pool, batch: &[(Item, Outcome)]) -> anyhow::Result<Vec<Recorded>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|&a, &b| {
        (&batch[a].0.job_id, batch[a].0.idx).cmp(&(&batch[b].0.job_id, batch[b].0.idx))
    });
    let mut results = vec![Recorded::AlreadyDone; batch.len()];
    let mut per_job: BTreeMap<&str, (Counts, Vec<usize>)> = BTreeMap::new();
    let mut updates = ItemUpdates::default();
    for i in order {
        let (item, outcome) = &batch[i];
        let lock = tx
            .prepare_cached(
                "SELECT 1 FROM job_items WHERE job_id = $1 AND idx = $2 AND state = 'pending' FOR UPDATE",
            )
            .await?;
        if tx
            .query_opt(&lock, &[&item.job_id, &item.idx])
            .await?
            .is_none()
        {
            continue;
        }
        let entry = match outcome {
            Outcome::Failed(reason) => EntryChange {
                state: "failed",
                reason: Some(reason.clone()),
                ..EntryChange::default()
            },
            Outcome::Downloaded(download) => upsert_entry(&tx, item, Some(download)).await?,
            Outcome::Unchanged => upsert_entry(&tx, item, None).await?,
        };
        updates.push(&item.job_id, item.idx, &entry);
        let (counts, members) = per_job.entry(item.job_id.as_str()).or_default();
        counts.add(entry.state);
        members.push(i);
        results[i] = Recorded::Done {
            state: entry.state,
            job_finished: false,
            asset_used: entry.asset_used,
            replaced_key: entry.replaced_key,
        };
    }
    updates.apply(&tx).await?;
    for (job_id, (counts, members)) in &per_job {
        if count_on_job(&tx, job_id, counts).await? {
            if let Some(Recorded::Done { job_finished, .. }) = results.get_mut(members[0]) {
                *job_finished = true;
            }
        }
    }
    tx.commit().await?;
    Ok(results)
}

/// The group's item rows, written with one statement.
#[derive(Default)]
struct ItemUpdates {
    job_ids: Vec<String>,
    idx: Vec<i32>,
    states: Vec<&'static str>,
    reasons: Vec<Option<String>>,
    media_ids: Vec<Option<String>>,
}

impl ItemUpdates {
    fn push(&mut self, job_id: &str, idx: i32, entry: &EntryChange) {
        self.job_ids.push(job_id.to_string());
        self.idx.push(idx);
        self.states.push(entry.state);
        self.reasons.push(entry.reason.clone());
        self.media_ids.push(entry.media_id.clone());
    }

    async fn apply(&self, tx: &Transaction<'_>) -> anyhow::Result<()> {
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
            .await?;
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
        .await?;
        Ok(())
    }
}

/// Outcomes of a group's videos of one job.
#[derive(Debug, Default)]
struct Counts {
    done: i32,
    imported: i32,
    skipped: i32,
    failed: i32,
}

impl Counts {
    fn add(&mut self, state: &str) {
        self.done += 1;
        match state {
            "imported" => self.imported += 1,
            "skipped" => self.skipped += 1,
            _ => self.failed += 1,
        }
    }
}

#[derive(Default)]
struct EntryChange {
    state: &'static str,
    reason: Option<String>,
    media_id: Option<String>,
    asset_used: bool,
    replaced_key: Option<String>,
}

/// Inserts or updates the entry of (project, systemName, externalId). `download` is `None`
/// when the source was unchanged.
async fn upsert_entry(
    tx: &Transaction<'_>,
    item: &Item,
    download: Option<&Downloaded>,
) -> anyhow::Result<EntryChange> {
    // The row lock serialises writers of an existing entry; two first imports of one
    // externalId at once meet at the unique key, and the loser's group is recorded again.
    let select = tx
        .prepare_cached(
            "SELECT id, sha256, metadata, file_name, asset_key FROM media_entries
             WHERE project_id = $1 AND system_name = $2 AND external_id = $3 FOR UPDATE",
        )
        .await?;
    let existing = tx
        .query_opt(
            &select,
            &[&item.project_id, &item.system_name, &item.external_id],
        )
        .await?;
    let Some(row) = existing else {
        let Some(d) = download else {
            return Ok(EntryChange {
                state: "failed",
                reason: Some(
                    "the source was unchanged but the entry no longer exists; import it again"
                        .into(),
                ),
                ..EntryChange::default()
            });
        };
        let media_id = ids::random_id(12);
        let insert = tx
            .prepare_cached(
                "INSERT INTO media_entries (id, project_id, system_name, external_id, file_name,
                     metadata, asset_key, asset_size, mime_type, sha256, original_url, source_etag,
                     source_last_modified, duration_seconds, width, height, video_codec)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            )
            .await?;
        tx.execute(
            &insert,
            &[
                &media_id,
                &item.project_id,
                &item.system_name,
                &item.external_id,
                &item.file_name,
                &item.metadata,
                &d.asset.key,
                &(d.asset.size as i64),
                &d.kind.mime_type,
                &d.asset.sha256,
                &item.url,
                &d.validators.etag,
                &d.validators.last_modified,
                &d.meta.duration_seconds,
                &d.meta.width,
                &d.meta.height,
                &d.meta.codec,
            ],
        )
        .await?;
        return Ok(EntryChange {
            state: "imported",
            media_id: Some(media_id),
            asset_used: true,
            ..EntryChange::default()
        });
    };
    let media_id: String = row.get(0);
    let same_bytes = download.is_none_or(|d| row.get::<_, String>(1) == d.asset.sha256);
    let same_metadata =
        row.get::<_, Value>(2) == item.metadata && row.get::<_, String>(3) == item.file_name;
    if same_bytes && same_metadata {
        return Ok(EntryChange {
            state: "skipped",
            reason: Some("already exists".into()),
            media_id: Some(media_id),
            ..EntryChange::default()
        });
    }
    if same_bytes {
        tx.execute(
            "UPDATE media_entries SET metadata = $2, file_name = $3, original_url = $4,
                 version = version + 1, updated_at = now() WHERE id = $1",
            &[&media_id, &item.metadata, &item.file_name, &item.url],
        )
        .await?;
        return Ok(EntryChange {
            state: "imported",
            media_id: Some(media_id),
            ..EntryChange::default()
        });
    }
    let d = download.expect("different bytes come from a download");
    tx.execute(
        "UPDATE media_entries SET metadata = $2, file_name = $3, original_url = $4,
             asset_key = $5, asset_size = $6, mime_type = $7, sha256 = $8, source_etag = $9,
             source_last_modified = $10, duration_seconds = $11, width = $12, height = $13,
             video_codec = $14, version = version + 1, updated_at = now()
         WHERE id = $1",
        &[
            &media_id,
            &item.metadata,
            &item.file_name,
            &item.url,
            &d.asset.key,
            &(d.asset.size as i64),
            &d.kind.mime_type,
            &d.asset.sha256,
            &d.validators.etag,
            &d.validators.last_modified,
            &d.meta.duration_seconds,
            &d.meta.width,
            &d.meta.height,
            &d.meta.codec,
        ],
    )
    .await?;
    Ok(EntryChange {
        state: "imported",
        media_id: Some(media_id),
        asset_used: true,
        replaced_key: Some(row.get(4)),
        ..EntryChange::default()
    })
}

/// Counts a group's videos on their job and, when none is left pending, finishes the job
/// and queues its webhook. Returns whether the job finished.
async fn count_on_job(tx: &Transaction<'_>, job_id: &str, counts: &Counts) -> anyhow::Result<bool> {
    let job = tx
        .query_one(
            "UPDATE jobs SET pending = pending - $2, imported = imported + $3,
                 skipped = skipped + $4, failed = failed + $5
             WHERE id = $1 RETURNING pending, webhook",
            &[
                &job_id,
                &counts.done,
                &counts.imported,
                &counts.skipped,
                &counts.failed,
            ],
        )
        .await?;
    let pending: i32 = job.get(0);
    if pending > 0 {
        return Ok(false);
    }
    tx.execute(
        "UPDATE jobs SET state = CASE WHEN failed > 0 THEN 'failed' ELSE 'success' END,
             finished_at = now() WHERE id = $1",
        &[&job_id],
    )
    .await?;
    if let Some(webhook) = job.get::<_, Option<String>>(1) {
        tx.execute(
            "INSERT INTO webhook_deliveries (job_id, webhook_id, url) VALUES ($1, $2, $3)",
            &[&job_id, &format!("msg_{job_id}"), &webhook],
        )
        .await?;
        let message = DeliverWebhook {
            job_id: job_id.to_string(),
            attempt: 1,
            waited: 0,
            url: Some(webhook),
        };
        outbox::enqueue(tx, queue::WEBHOOK, &[message]).await?;
    }
    Ok(true)
}
