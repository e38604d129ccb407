//! The one transaction that records a video's outcome: upsert the media-library entry, mark
//! the item, count it on the job and, with the job's last item, finish the job and queue its
//! webhook. Guarded by the item's `pending` state, so redelivered messages change nothing.

use deadpool_postgres::Pool;
use serde_json::Value;
use video_import_shared::messages::DeliverWebhook;
use video_import_shared::{ids, outbox, queue};

use crate::fetch::Downloaded;
use crate::store::Storage;

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
}

/// Loads an item; `None` when the job no longer exists.
pub async fn load(pool: &Pool, job_id: &str, idx: i32) -> anyhow::Result<Option<Item>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT j.project_id, j.system_name, i.external_id, i.url, i.file_name, i.metadata,
                    i.state = 'pending'
             FROM job_items i JOIN jobs j ON j.id = i.job_id
             WHERE i.job_id = $1 AND i.idx = $2",
            &[&job_id, &idx],
        )
        .await?;
    Ok(row.map(|r| Item {
        job_id: job_id.to_string(),
        idx,
        project_id: r.get(0),
        system_name: r.get(1),
        external_id: r.get(2),
        url: r.get(3),
        file_name: r.get(4),
        metadata: r.get(5),
        pending: r.get(6),
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

/// What happened to the video.
#[derive(Clone)]
pub enum Outcome<'a> {
    Downloaded(&'a Downloaded),
    Failed(String),
}

/// What the transaction did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Another delivery of the same message got there first.
    AlreadyDone,
    /// The item ended in `state`; `job_finished` when it was the job's last.
    Done {
        state: &'static str,
        job_finished: bool,
    },
}

/// Records `outcome` for `item` in one transaction; see the module doc.
pub async fn record(
    pool: &Pool,
    storage: &Storage,
    item: &Item,
    outcome: Outcome<'_>,
) -> anyhow::Result<Recorded> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let still_pending = tx
        .query_opt(
            "SELECT 1 FROM job_items WHERE job_id = $1 AND idx = $2 AND state = 'pending' FOR UPDATE",
            &[&item.job_id, &item.idx],
        )
        .await?
        .is_some();
    if !still_pending {
        return Ok(Recorded::AlreadyDone);
    }

    let mut new_key: Option<String> = None;
    let mut replaced_key: Option<String> = None;
    let (state, reason, media_id) = match outcome {
        Outcome::Failed(reason) => ("failed", Some(reason), None),
        Outcome::Downloaded(download) => {
            // Serialise writers of one entry: two jobs may import the same externalId at once.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1::bigint || '/' || $2 || '/' || $3, 0))",
                &[&item.project_id, &item.system_name, &item.external_id],
            )
            .await?;
            let existing = tx
                .query_opt(
                    "SELECT id, sha256, metadata, file_name, asset_key FROM media_entries
                     WHERE project_id = $1 AND system_name = $2 AND external_id = $3",
                    &[&item.project_id, &item.system_name, &item.external_id],
                )
                .await?;
            let asset = &download.asset;
            let size = asset.size as i64;
            match existing {
                None => {
                    let media_id = ids::random_id(12);
                    let key = asset_key(item.project_id, &media_id, &download.kind.extension);
                    storage.publish(asset, &key).await?;
                    new_key = Some(key.clone());
                    tx.execute(
                        "INSERT INTO media_entries (id, project_id, system_name, external_id,
                             file_name, metadata, asset_key, asset_size, mime_type, sha256, original_url)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                        &[
                            &media_id, &item.project_id, &item.system_name, &item.external_id,
                            &item.file_name, &item.metadata, &key, &size,
                            &download.kind.mime_type, &asset.sha256, &item.url,
                        ],
                    )
                    .await?;
                    ("imported", None, Some(media_id))
                }
                Some(row) => {
                    let media_id: String = row.get(0);
                    let same_bytes = row.get::<_, String>(1) == asset.sha256;
                    let same_metadata = row.get::<_, Value>(2) == item.metadata
                        && row.get::<_, String>(3) == item.file_name;
                    if same_bytes && same_metadata {
                        (
                            "skipped",
                            Some("already exists".to_string()),
                            Some(media_id),
                        )
                    } else if same_bytes {
                        tx.execute(
                            "UPDATE media_entries SET metadata = $2, file_name = $3, original_url = $4,
                                 version = version + 1, updated_at = now() WHERE id = $1",
                            &[&media_id, &item.metadata, &item.file_name, &item.url],
                        )
                        .await?;
                        ("imported", None, Some(media_id))
                    } else {
                        let key = asset_key(item.project_id, &media_id, &download.kind.extension);
                        storage.publish(asset, &key).await?;
                        new_key = Some(key.clone());
                        replaced_key = Some(row.get(4));
                        tx.execute(
                            "UPDATE media_entries SET metadata = $2, file_name = $3, original_url = $4,
                                 asset_key = $5, asset_size = $6, mime_type = $7, sha256 = $8,
                                 version = version + 1, updated_at = now() WHERE id = $1",
                            &[
                                &media_id, &item.metadata, &item.file_name, &item.url, &key,
                                &size, &download.kind.mime_type, &asset.sha256,
                            ],
                        )
                        .await?;
                        ("imported", None, Some(media_id))
                    }
                }
            }
        }
    };

    let result = finish_item(&tx, item, state, reason.as_deref(), media_id.as_deref()).await;
    let result = match result {
        Ok(job_finished) => tx.commit().await.map(|_| job_finished).map_err(Into::into),
        Err(e) => Err(e),
    };
    match result {
        Ok(job_finished) => {
            if let Some(old) = replaced_key {
                // Only now that the new entry is committed may the old asset go.
                storage.remove(&old).await;
            }
            Ok(Recorded::Done {
                state,
                job_finished,
            })
        }
        Err(e) => {
            if let Some(key) = new_key {
                storage.remove(&key).await;
            }
            Err(e)
        }
    }
}

/// Marks the item, counts it on the job, and finishes the job with its last item.
async fn finish_item(
    tx: &deadpool_postgres::Transaction<'_>,
    item: &Item,
    state: &str,
    reason: Option<&str>,
    media_id: Option<&str>,
) -> anyhow::Result<bool> {
    tx.execute(
        "UPDATE job_items SET state = $3, reason = $4, media_id = $5, updated_at = now()
         WHERE job_id = $1 AND idx = $2",
        &[&item.job_id, &item.idx, &state, &reason, &media_id],
    )
    .await?;
    let job = tx
        .query_one(
            "UPDATE jobs SET pending = pending - 1,
                 imported = imported + ($2 = 'imported')::int,
                 skipped = skipped + ($2 = 'skipped')::int,
                 failed = failed + ($2 = 'failed')::int
             WHERE id = $1 RETURNING pending, webhook",
            &[&item.job_id, &state],
        )
        .await?;
    let pending: i32 = job.get(0);
    if pending > 0 {
        return Ok(false);
    }
    tx.execute(
        "UPDATE jobs SET state = CASE WHEN failed > 0 THEN 'failed' ELSE 'success' END,
             finished_at = now() WHERE id = $1",
        &[&item.job_id],
    )
    .await?;
    if let Some(webhook) = job.get::<_, Option<String>>(1) {
        tx.execute(
            "INSERT INTO webhook_deliveries (job_id, webhook_id, url) VALUES ($1, $2, $3)",
            &[&item.job_id, &format!("msg_{}", item.job_id), &webhook],
        )
        .await?;
        let message = DeliverWebhook {
            job_id: item.job_id.clone(),
            attempt: 1,
        };
        outbox::enqueue(tx, queue::WEBHOOK, &[message]).await?;
    }
    Ok(true)
}

/// A fresh key per stored version, so a concurrent or failed attempt never overwrites an
/// asset that a committed entry points at.
fn asset_key(project_id: i64, media_id: &str, extension: &str) -> String {
    format!("{project_id}/{media_id}/{}.{extension}", ids::random_id(10))
}
