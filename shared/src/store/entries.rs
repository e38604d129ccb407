//! The media library: one entry per (project, systemName, externalId), created or updated
//! when a video is recorded, read by the API.

use std::sync::LazyLock;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::items::Item;
use super::ItemState;

/// The source's cache validators, sent back on re-imports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    /// Whether the source sent neither an ETag nor a Last-Modified.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// A stored, sniffed download as its entry records it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAsset {
    pub key: String,
    pub size: i64,
    pub mime_type: String,
    pub sha256: String,
    pub validators: Validators,
    pub duration_seconds: Option<f64>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub codec: Option<String>,
}

/// The asset columns, in the order both the insert and the update bind them.
const ASSET_COLUMNS: &str = "asset_key, asset_size, mime_type, sha256, source_etag, \
    source_last_modified, duration_seconds, width, height, video_codec";

impl NewAsset {
    /// Values for [`ASSET_COLUMNS`].
    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.key,
            &self.size,
            &self.mime_type,
            &self.sha256,
            &self.validators.etag,
            &self.validators.last_modified,
            &self.duration_seconds,
            &self.width,
            &self.height,
            &self.codec,
        ]
    }
}

/// Inserts an entry with its asset (the statement is built once).
static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO media_entries (id, project_id, system_name, external_id, file_name,
             metadata, original_url, {ASSET_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, {})",
        asset_placeholders(8)
    )
});

/// Updates an entry's metadata and replaces its asset.
static REPLACE_ASSET_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE media_entries SET metadata = $2, file_name = $3, original_url = $4,
             ({ASSET_COLUMNS}) = ROW({}), version = version + 1, updated_at = now()
         WHERE id = $1",
        asset_placeholders(5)
    )
});

/// `$first, $first+1, …` for the asset columns.
fn asset_placeholders(first: usize) -> String {
    (first..first + 10)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What recording one video did to its entry.
#[derive(Debug, Default)]
pub(super) struct EntryChange {
    pub state: Option<ItemState>,
    pub reason: Option<String>,
    pub media_id: Option<String>,
    /// The entry now points at the downloaded asset (otherwise it may be deleted).
    pub asset_used: bool,
    /// The asset this one replaced, to delete once the commit is done.
    pub replaced_key: Option<String>,
}

impl EntryChange {
    fn new(state: ItemState) -> Self {
        Self {
            state: Some(state),
            ..Self::default()
        }
    }
}

/// Inserts or updates the entry of the item's (project, systemName, externalId). `asset` is
/// `None` when the source said it was unchanged.
pub(super) async fn upsert(
    tx: &Transaction<'_>,
    item: &Item,
    asset: Option<&NewAsset>,
) -> anyhow::Result<EntryChange> {
    // The row lock serialises writers of an existing entry; two first imports of one
    // externalId at once meet at the unique key, and the loser's group is recorded again.
    let select = tx
        .prepare_cached(
            "SELECT id, sha256, metadata, file_name, asset_key FROM media_entries
             WHERE project_id = $1 AND system_name = $2 AND external_id = $3 FOR UPDATE",
        )
        .await
        .context("preparing the entry lookup")?;
    let existing = tx
        .query_opt(
            &select,
            &[&item.project_id, &item.system_name, &item.external_id],
        )
        .await
        .context("locking the entry")?;
    let Some(row) = existing else {
        let Some(asset) = asset else {
            return Ok(EntryChange {
                reason: Some(
                    "the source was unchanged but the entry no longer exists; import it again"
                        .into(),
                ),
                ..EntryChange::new(ItemState::Failed)
            });
        };
        let media_id = crate::ids::random_id(12);
        let insert = tx
            .prepare_cached(&INSERT_SQL)
            .await
            .context("preparing the entry insert")?;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &media_id,
            &item.project_id,
            &item.system_name,
            &item.external_id,
            &item.file_name,
            &item.metadata,
            &item.url,
        ];
        params.extend(asset.params());
        tx.execute(&insert, &params)
            .await
            .context("inserting the entry")?;
        return Ok(EntryChange {
            media_id: Some(media_id),
            asset_used: true,
            ..EntryChange::new(ItemState::Imported)
        });
    };
    let media_id: String = row.get(0);
    let same_bytes = asset.is_none_or(|a| row.get::<_, String>(1) == a.sha256);
    let same_metadata =
        row.get::<_, Value>(2) == item.metadata && row.get::<_, String>(3) == item.file_name;
    if same_bytes && same_metadata {
        return Ok(EntryChange {
            reason: Some("already exists".into()),
            media_id: Some(media_id),
            ..EntryChange::new(ItemState::Skipped)
        });
    }
    let mut params: Vec<&(dyn ToSql + Sync)> =
        vec![&media_id, &item.metadata, &item.file_name, &item.url];
    let new_asset = asset.filter(|_| !same_bytes);
    let sql: &str = match new_asset {
        None => {
            "UPDATE media_entries SET metadata = $2, file_name = $3, original_url = $4,
                 version = version + 1, updated_at = now() WHERE id = $1"
        }
        Some(asset) => {
            params.extend(asset.params());
            &REPLACE_ASSET_SQL
        }
    };
    tx.execute(sql, &params)
        .await
        .context("updating the entry")?;
    Ok(EntryChange {
        media_id: Some(media_id),
        asset_used: new_asset.is_some(),
        replaced_key: new_asset.map(|_| row.get(4)),
        ..EntryChange::new(ItemState::Imported)
    })
}

/// Whether a committed entry points at the asset `key` (so it must not be deleted).
pub async fn is_referenced(client: &impl GenericClient, key: &str) -> anyhow::Result<bool> {
    Ok(client
        .query_opt("SELECT 1 FROM media_entries WHERE asset_key = $1", &[&key])
        .await
        .context("checking whether an entry uses the asset")?
        .is_some())
}

/// Those of `keys` that no entry references.
pub async fn unreferenced(
    client: &impl GenericClient,
    keys: &[String],
) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT k FROM unnest($1::text[]) AS k
             WHERE NOT EXISTS (SELECT 1 FROM media_entries WHERE asset_key = k)",
            &[&keys],
        )
        .await
        .context("checking which stored objects entries reference")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Runs `work` unless another process holds the sweeper's lock; `None` then. The lock is
/// PostgreSQL's, held by one connection for the duration, so it ends with a crashed process.
pub async fn while_sweep_locked<T, F>(
    pool: &deadpool_postgres::Pool,
    work: F,
) -> anyhow::Result<Option<T>>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    const SWEEP_LOCK: i64 = 0x0073_7765_6570;
    let client = pool
        .get()
        .await
        .context("connecting for the sweeper's lock")?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&SWEEP_LOCK])
        .await
        .context("taking the sweeper's lock")?
        .get(0);
    if !locked {
        return Ok(None);
    }
    let result = work.await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&SWEEP_LOCK])
        .await
        .context("releasing the sweeper's lock")?;
    result.map(Some)
}

/// An entry as the API shows it.
#[derive(Debug, Clone)]
pub struct EntryRecord {
    pub id: String,
    pub version: i32,
    pub system_name: String,
    pub external_id: String,
    pub file_name: String,
    pub metadata: Value,
    pub asset: NewAsset,
    pub original_url: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ENTRY_COLUMNS: &str = "id, version, system_name, external_id, file_name, metadata,
    original_url, created_at, updated_at, asset_key, asset_size, mime_type, sha256, source_etag,
    source_last_modified, duration_seconds, width, height, video_codec";

impl EntryRecord {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            version: row.get(1),
            system_name: row.get(2),
            external_id: row.get(3),
            file_name: row.get(4),
            metadata: row.get(5),
            original_url: row.get(6),
            created_at: row.get(7),
            updated_at: row.get(8),
            asset: NewAsset {
                key: row.get(9),
                size: row.get(10),
                mime_type: row.get(11),
                sha256: row.get(12),
                validators: Validators {
                    etag: row.get(13),
                    last_modified: row.get(14),
                },
                duration_seconds: row.get(15),
                width: row.get(16),
                height: row.get(17),
                codec: row.get(18),
            },
        }
    }
}

/// The project's entry `id`.
pub async fn find(
    client: &impl GenericClient,
    project_id: i64,
    id: &str,
) -> anyhow::Result<Option<EntryRecord>> {
    let row = client
        .query_opt(
            &format!("SELECT {ENTRY_COLUMNS} FROM media_entries WHERE id = $1 AND project_id = $2"),
            &[&id, &project_id],
        )
        .await
        .context("reading the entry")?;
    Ok(row.as_ref().map(EntryRecord::from_row))
}

/// The project's entries with this `systemName` and `externalId` (zero or one).
pub async fn find_by_external_id(
    client: &impl GenericClient,
    project_id: i64,
    system_name: &str,
    external_id: &str,
) -> anyhow::Result<Vec<EntryRecord>> {
    let rows = client
        .query(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM media_entries
                 WHERE project_id = $1 AND system_name = $2 AND external_id = $3"
            ),
            &[&project_id, &system_name, &external_id],
        )
        .await
        .context("looking up the entry")?;
    Ok(rows.iter().map(EntryRecord::from_row).collect())
}
