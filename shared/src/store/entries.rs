//! The media library: one entry per (project, systemName, externalId), created or updated
//! when a video is recorded, read by the API.

use std::collections::HashMap;
use std::sync::LazyLock;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::model::{Item, Validators};
use super::{DamageKind, ItemState};

/// A stored, sniffed download as its entry records it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAsset {
    pub key: String,
    pub size: i64,
    pub mime_type: String,
    pub sha256: String,
    /// Hex MD5 of the file (`None` for entries stored before it was kept).
    pub md5: Option<String>,
    pub validators: Validators,
    pub duration_seconds: Option<f64>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub codec: Option<String>,
}

/// The asset columns, in the order both the insert and the update bind them.
const ASSET_COLUMNS: &str = "asset_key, asset_size, mime_type, sha256, source_etag, \
    source_last_modified, duration_seconds, width, height, video_codec, md5";

impl NewAsset {
    /// Values for [`ASSET_COLUMNS`].
    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
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
            &self.md5,
        ]
    }
}

/// Inserts a group's new entries, one row per element of the arrays (built once).
static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO media_entries (id, project_id, system_name, external_id, file_name,
             metadata, original_url, {ASSET_COLUMNS})
         SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[],
             $6::jsonb[], $7::text[], $8::text[], $9::int8[], $10::text[], $11::text[],
             $12::text[], $13::text[], $14::float8[], $15::int4[], $16::int4[], $17::text[],
             $18::text[])"
    )
});

/// Updates an entry's metadata and replaces its asset.
static REPLACE_ASSET_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE media_entries SET metadata = $2, file_name = $3, original_url = $4,
             ({ASSET_COLUMNS}) = ROW({}), version = version + 1, updated_at = now(),
             damaged_at = NULL, damage_kind = NULL, damage = NULL
         WHERE id = $1",
        (5..16)
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
});

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

/// An entry's identity: (project, systemName, externalId).
pub(super) type EntryKey = (i64, String, String);

/// The key of the entry an item imports into.
pub(super) fn key_of(item: &Item) -> EntryKey {
    (
        item.project_id,
        item.system_name.clone(),
        item.external_id.clone(),
    )
}

/// What deciding about a video needs of the entry as it stands.
#[derive(Debug, Clone)]
pub(super) struct Current {
    id: String,
    sha256: String,
    metadata: Value,
    file_name: String,
    asset_key: String,
    /// Its stored object was found missing or changed (see [`mark_damaged`]): the next
    /// download replaces it, whatever its bytes.
    damaged: bool,
}

/// Locks the existing entries of `keys` (in id order, so concurrent groups do not deadlock)
/// and returns them by key. Two first imports of one externalId at once meet at the unique
/// key when inserting, and the loser's group is recorded again.
pub(super) async fn lock_existing(
    tx: &Transaction<'_>,
    keys: &[EntryKey],
) -> anyhow::Result<HashMap<EntryKey, Current>> {
    let projects: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let systems: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let external: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
    // Planned once per session as index lookups (the caller's transaction says so): a plan
    // made with the statistics of a nearly empty library would scan it whole once grown.
    let statement = tx
        .prepare_cached(
            "SELECT m.project_id, m.system_name, m.external_id, m.id, m.sha256, m.metadata,
                    m.file_name, m.asset_key, m.damaged_at IS NOT NULL
             FROM unnest($1::int8[], $2::text[], $3::text[]) AS k(project_id, system_name, external_id)
             JOIN media_entries m ON m.project_id = k.project_id
                 AND m.system_name = k.system_name AND m.external_id = k.external_id
             ORDER BY m.id FOR UPDATE OF m",
        )
        .await
        .context("preparing the entry lock")?;
    let rows = tx
        .query(&statement, &[&projects, &systems, &external])
        .await
        .context("locking the group's entries")?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1), r.get(2)),
                Current {
                    id: r.get(3),
                    sha256: r.get(4),
                    metadata: r.get(5),
                    file_name: r.get(6),
                    asset_key: r.get(7),
                    damaged: r.get(8),
                },
            )
        })
        .collect())
}

/// A group's entry writes, planned video by video and written together.
#[derive(Default)]
pub(super) struct Writes {
    inserts: Vec<(String, Item, NewAsset)>,
    updates: Vec<(String, Item, Option<NewAsset>)>,
}

impl Writes {
    /// Decides what the video does to its entry (`current`, as the earlier videos of the
    /// group left it) and plans the write. `asset` is `None` when the source said it was
    /// unchanged (or a checksum named the stored file). `None` when that stored file has
    /// been marked damaged meanwhile (the 304 or the checksum match was decided before the
    /// mark): there is nothing to keep and nothing is planned; the video is downloaded again.
    pub(super) fn plan(
        &mut self,
        current: &mut HashMap<EntryKey, Current>,
        item: &Item,
        asset: Option<&NewAsset>,
    ) -> Option<EntryChange> {
        let key = key_of(item);
        let Some(entry) = current.get_mut(&key) else {
            let Some(asset) = asset else {
                return Some(EntryChange {
                    reason: Some(
                        "the source was unchanged but the entry no longer exists; import it again"
                            .into(),
                    ),
                    ..EntryChange::new(ItemState::Failed)
                });
            };
            let media_id = crate::ids::random_id(12);
            current.insert(
                key,
                Current {
                    id: media_id.clone(),
                    sha256: asset.sha256.clone(),
                    metadata: item.metadata.clone(),
                    file_name: item.file_name.clone(),
                    asset_key: asset.key.clone(),
                    damaged: false,
                },
            );
            self.inserts
                .push((media_id.clone(), item.clone(), asset.clone()));
            return Some(EntryChange {
                media_id: Some(media_id),
                asset_used: true,
                ..EntryChange::new(ItemState::Imported)
            });
        };
        if entry.damaged && asset.is_none() {
            // A 304 or a checksum match that was decided before the entry was marked: the
            // stored copy is not there to keep.
            return None;
        }
        // A damaged entry takes the new download even when its bytes are the same.
        let same_bytes = !entry.damaged && asset.is_none_or(|a| entry.sha256 == a.sha256);
        let same_metadata = entry.metadata == item.metadata && entry.file_name == item.file_name;
        if same_bytes && same_metadata {
            return Some(EntryChange {
                reason: Some("already exists".into()),
                media_id: Some(entry.id.clone()),
                ..EntryChange::new(ItemState::Skipped)
            });
        }
        let new_asset = asset.filter(|_| !same_bytes).cloned();
        entry.metadata = item.metadata.clone();
        entry.file_name = item.file_name.clone();
        let replaced_key = new_asset.as_ref().map(|a| {
            entry.sha256 = a.sha256.clone();
            entry.damaged = false;
            std::mem::replace(&mut entry.asset_key, a.key.clone())
        });
        self.updates
            .push((entry.id.clone(), item.clone(), new_asset));
        Some(EntryChange {
            media_id: Some(entry.id.clone()),
            asset_used: replaced_key.is_some(),
            replaced_key,
            ..EntryChange::new(ItemState::Imported)
        })
    }

    /// Writes the planned inserts (one statement) and then the updates.
    pub(super) async fn write(&self, tx: &Transaction<'_>) -> anyhow::Result<()> {
        if !self.inserts.is_empty() {
            let column = |f: &dyn Fn(&(String, Item, NewAsset)) -> String| -> Vec<String> {
                self.inserts.iter().map(f).collect()
            };
            let ids = column(&|(id, _, _)| id.clone());
            let projects: Vec<i64> = self.inserts.iter().map(|(_, i, _)| i.project_id).collect();
            let systems = column(&|(_, i, _)| i.system_name.clone());
            let external = column(&|(_, i, _)| i.external_id.clone());
            let file_names = column(&|(_, i, _)| i.file_name.clone());
            let metadata: Vec<&Value> = self.inserts.iter().map(|(_, i, _)| &i.metadata).collect();
            let urls = column(&|(_, i, _)| i.url.clone());
            let keys = column(&|(_, _, a)| a.key.clone());
            let sizes: Vec<i64> = self.inserts.iter().map(|(_, _, a)| a.size).collect();
            let mimes = column(&|(_, _, a)| a.mime_type.clone());
            let hashes = column(&|(_, _, a)| a.sha256.clone());
            let etags: Vec<Option<&str>> = self
                .inserts
                .iter()
                .map(|(_, _, a)| a.validators.etag.as_deref())
                .collect();
            let modified: Vec<Option<&str>> = self
                .inserts
                .iter()
                .map(|(_, _, a)| a.validators.last_modified.as_deref())
                .collect();
            let durations: Vec<Option<f64>> = self
                .inserts
                .iter()
                .map(|(_, _, a)| a.duration_seconds)
                .collect();
            let widths: Vec<Option<i32>> = self.inserts.iter().map(|(_, _, a)| a.width).collect();
            let heights: Vec<Option<i32>> = self.inserts.iter().map(|(_, _, a)| a.height).collect();
            let codecs: Vec<Option<&str>> = self
                .inserts
                .iter()
                .map(|(_, _, a)| a.codec.as_deref())
                .collect();
            let md5s: Vec<Option<&str>> = self
                .inserts
                .iter()
                .map(|(_, _, a)| a.md5.as_deref())
                .collect();
            let insert = tx
                .prepare_cached(&INSERT_SQL)
                .await
                .context("preparing the entry insert")?;
            tx.execute(
                &insert,
                &[
                    &ids,
                    &projects,
                    &systems,
                    &external,
                    &file_names,
                    &metadata,
                    &urls,
                    &keys,
                    &sizes,
                    &mimes,
                    &hashes,
                    &etags,
                    &modified,
                    &durations,
                    &widths,
                    &heights,
                    &codecs,
                    &md5s,
                ],
            )
            .await
            .context("inserting the group's new entries")?;
        }
        for (id, item, asset) in &self.updates {
            let mut params: Vec<&(dyn ToSql + Sync)> =
                vec![id, &item.metadata, &item.file_name, &item.url];
            let sql: &str = match asset {
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
        }
        Ok(())
    }
}

/// Whether a committed entry points at the asset `key` (so it must not be deleted).
pub async fn is_referenced(client: &impl GenericClient, key: &str) -> anyhow::Result<bool> {
    Ok(client
        .query_opt("SELECT 1 FROM media_entries WHERE asset_key = $1", &[&key])
        .await
        .context("checking whether an entry uses the asset")?
        .is_some())
}

/// Those of the stored objects `keys` that no entry references: neither as its asset nor,
/// for a pack file, through any of its ranges (`PACK@OFFSET+LENGTH`, see
/// `storage::Location`).
pub async fn unreferenced(
    client: &impl GenericClient,
    keys: &[String],
) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT k FROM unnest($1::text[]) AS k
             WHERE NOT EXISTS (SELECT 1 FROM media_entries WHERE asset_key = k)
               AND NOT EXISTS (SELECT 1 FROM media_entries WHERE split_part(asset_key, '@', 1) = k)",
            &[&keys],
        )
        .await
        .context("checking which stored objects entries reference")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How many bytes of each of the packs `packs` (object keys) entries still use, by pack; a
/// pack no entry uses is not in it. Entries marked damaged do not count: their next import
/// replaces what they reference.
pub async fn pack_usage(
    client: &impl GenericClient,
    packs: &[String],
) -> anyhow::Result<HashMap<String, u64>> {
    let rows = client
        .query(
            "SELECT split_part(asset_key, '@', 1), sum(asset_size)::int8 FROM media_entries
             WHERE split_part(asset_key, '@', 1) = ANY($1::text[]) AND damaged_at IS NULL
             GROUP BY 1",
            &[&packs],
        )
        .await
        .context("summing the bytes entries use of each pack")?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
        .collect())
}

/// An entry's asset that is a range of a pack, as the sweeper moves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedAsset {
    pub entry_id: String,
    pub key: String,
    pub size: i64,
    pub sha256: String,
}

/// The assets of the entries that keep theirs in one of the packs `packs`, except entries
/// marked damaged (their next import replaces the asset; nothing there to keep).
pub async fn assets_in_packs(
    client: &impl GenericClient,
    packs: &[String],
) -> anyhow::Result<Vec<PackedAsset>> {
    let rows = client
        .query(
            "SELECT id, asset_key, asset_size, sha256 FROM media_entries
             WHERE split_part(asset_key, '@', 1) = ANY($1::text[]) AND damaged_at IS NULL
             ORDER BY asset_key",
            &[&packs],
        )
        .await
        .context("listing the assets kept in packs")?;
    Ok(rows
        .iter()
        .map(|r| PackedAsset {
            entry_id: r.get(0),
            key: r.get(1),
            size: r.get(2),
            sha256: r.get(3),
        })
        .collect())
}

/// Points each moved asset's entry at its new key, unless the entry's key changed since
/// it was read (an import replaced the asset meanwhile) or it was marked damaged since (its
/// mark names the old place): the copy is then left unused. The
/// entry is otherwise untouched: its bytes, version and time stay what they were. Returns
/// how many entries now use their new key.
pub async fn move_assets(
    client: &impl GenericClient,
    moves: &[(PackedAsset, String)],
) -> anyhow::Result<u64> {
    let ids: Vec<&str> = moves.iter().map(|(a, _)| a.entry_id.as_str()).collect();
    let old: Vec<&str> = moves.iter().map(|(a, _)| a.key.as_str()).collect();
    let new: Vec<&str> = moves.iter().map(|(_, key)| key.as_str()).collect();
    client
        .execute(
            "UPDATE media_entries m SET asset_key = v.new
             FROM unnest($1::text[], $2::text[], $3::text[]) AS v(id, old, new)
             WHERE m.id = v.id AND m.asset_key = v.old AND m.damaged_at IS NULL",
            &[&ids, &old, &new],
        )
        .await
        .context("pointing entries at their moved assets")
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
    /// Set while its stored object is marked damaged.
    pub damage: Option<Damage>,
}

/// Why an entry is marked damaged.
#[derive(Debug, Clone, PartialEq)]
pub struct Damage {
    pub kind: DamageKind,
    /// What was expected and what was found, e.g. `wrong size: expected 2815 bytes, found 1000`.
    pub description: String,
    /// When the verifier first found it.
    pub found_at: DateTime<Utc>,
}

const ENTRY_COLUMNS: &str = "id, version, system_name, external_id, file_name, metadata,
    original_url, created_at, updated_at, asset_key, asset_size, mime_type, sha256, source_etag,
    source_last_modified, duration_seconds, width, height, video_codec, md5, damaged_at,
    damage_kind, damage";

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
                md5: row.get(19),
            },
            damage: row
                .get::<_, Option<DateTime<Utc>>>(20)
                .map(|found_at| Damage {
                    found_at,
                    kind: row
                        .get::<_, Option<DamageKind>>(21)
                        .unwrap_or(DamageKind::Missing),
                    description: row.get::<_, Option<String>>(22).unwrap_or_default(),
                }),
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

/// The SHA-256 and MD5 of the file of the project's entry (`systemName`, `externalId`), if
/// there is one and it is not marked damaged (a damaged file is no reason to skip).
pub async fn stored_hashes(
    client: &impl GenericClient,
    project_id: i64,
    system_name: &str,
    external_id: &str,
) -> anyhow::Result<Option<(String, Option<String>)>> {
    let statement = client
        .prepare_cached(
            "SELECT sha256, md5 FROM media_entries
             WHERE project_id = $1 AND system_name = $2 AND external_id = $3
                 AND damaged_at IS NULL",
        )
        .await
        .context("preparing the stored-hash look")?;
    let row = client
        .query_opt(&statement, &[&project_id, &system_name, &external_id])
        .await
        .context("reading the entry's hashes")?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
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

/// Marks entry `id` damaged, if it still points at `key` (a re-import that replaced the
/// object meanwhile leaves it alone): its next import downloads again, with no conditional
/// request, no "already exists" and no checksum-match skip. The first finding's time is
/// kept; the kind and description are the latest. Returns whether the entry was marked.
pub async fn mark_damaged(
    client: &impl GenericClient,
    id: &str,
    key: &str,
    kind: DamageKind,
    description: &str,
) -> anyhow::Result<bool> {
    let changed = client
        .execute(
            "UPDATE media_entries SET damaged_at = coalesce(damaged_at, now()),
                 damage_kind = $3, damage = $4
             WHERE id = $1 AND asset_key = $2",
            &[&id, &key, &kind, &description],
        )
        .await
        .context("marking the entry damaged")?;
    Ok(changed == 1)
}

/// Clears the damage mark of entry `id` if it still points at `key` (its object was read
/// again and found whole). Returns whether a mark was cleared.
pub async fn clear_damage(
    client: &impl GenericClient,
    id: &str,
    key: &str,
) -> anyhow::Result<bool> {
    let changed = client
        .execute(
            "UPDATE media_entries SET damaged_at = NULL, damage_kind = NULL, damage = NULL
             WHERE id = $1 AND asset_key = $2 AND damaged_at IS NOT NULL",
            &[&id, &key],
        )
        .await
        .context("clearing the entry's damage mark")?;
    Ok(changed == 1)
}

/// How many entries are marked damaged now (a small partial index holds them).
pub async fn damaged_count(client: &impl GenericClient) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM media_entries WHERE damaged_at IS NOT NULL",
            &[],
        )
        .await
        .context("counting the damaged entries")?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item() -> Item {
        Item {
            job_id: "job".into(),
            idx: 0,
            project_id: 1,
            system_name: "archive".into(),
            external_id: "a".into(),
            url: "http://127.0.0.1/a.mp4".into(),
            file_name: "a.mp4".into(),
            metadata: json!({"title": "A"}),
            state: ItemState::Pending,
            known: None,
            checksum: Default::default(),
        }
    }

    fn asset(key: &str, sha256: &str) -> NewAsset {
        NewAsset {
            key: key.into(),
            size: 10,
            mime_type: "video/mp4".into(),
            sha256: sha256.into(),
            md5: None,
            validators: Validators::default(),
            duration_seconds: None,
            width: None,
            height: None,
            codec: None,
        }
    }

    /// The library with the item's entry, stored at `1/old.mp4`, marked damaged or not.
    fn library(damaged: bool) -> HashMap<EntryKey, Current> {
        let item = item();
        HashMap::from([(
            key_of(&item),
            Current {
                id: "entry".into(),
                sha256: "same".into(),
                metadata: item.metadata.clone(),
                file_name: item.file_name.clone(),
                asset_key: "1/old.mp4".into(),
                damaged,
            },
        )])
    }

    #[test]
    fn an_unchanged_source_keeps_a_whole_file_but_not_one_marked_damaged_meanwhile() {
        // Whole: the 304 (or checksum match) keeps it, and the video is skipped.
        let mut writes = Writes::default();
        let change = writes.plan(&mut library(false), &item(), None).unwrap();
        assert_eq!(change.state, Some(ItemState::Skipped));
        assert_eq!(change.reason.as_deref(), Some("already exists"));
        // Marked damaged after the 304 was decided: nothing is recorded or written (the
        // video is downloaded again), rather than the video failing.
        let mut writes = Writes::default();
        let mut damaged = library(true);
        assert!(writes.plan(&mut damaged, &item(), None).is_none());
        assert!(writes.inserts.is_empty() && writes.updates.is_empty());
        // The download that follows replaces the file, even with the same bytes.
        let change = writes
            .plan(&mut damaged, &item(), Some(&asset("1/new.mp4", "same")))
            .unwrap();
        assert_eq!(change.state, Some(ItemState::Imported));
        assert!(change.asset_used);
        assert_eq!(change.replaced_key.as_deref(), Some("1/old.mp4"));
        assert_eq!(writes.updates.len(), 1);
        assert!(
            !damaged[&key_of(&item())].damaged,
            "the mark goes with the file"
        );
    }

    #[test]
    fn an_unchanged_source_of_an_entry_that_is_gone_fails_the_video() {
        let change = Writes::default()
            .plan(&mut HashMap::new(), &item(), None)
            .unwrap();
        assert_eq!(change.state, Some(ItemState::Failed));
        assert!(change
            .reason
            .unwrap()
            .contains("the entry no longer exists"));
    }
}
