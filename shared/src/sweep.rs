//! The storage sweeper: removes stored objects that no media-library entry references once
//! they are older than a grace period. They are left by a process that stopped between an
//! upload and its commit (killed, or its database went away); a replaced or unused asset is
//! removed on the spot otherwise. A pack of small videos goes once no entry uses any of
//! them; one most of whose bytes no entry uses has the videos still used moved into a new
//! pack first (local storage, `storage.small_files = packed`), so that the space of replaced
//! videos comes back. One sweeper runs at a time (a PostgreSQL advisory lock), and workers
//! sweep once per interval between them (`store::sweeps`).

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::storage::{Location, Storage, StoredObject};
use crate::store::{entries, locks, sweeps};

/// Keys checked against the database per query.
const PAGE: usize = 1000;

/// The bytes of videos a new pack takes at most when the sweeper moves videos out of mostly
/// unused packs (read into memory, then written: this bounds what a sweep holds).
const REPACK_BYTES: u64 = 8 * 1024 * 1024;

/// What a sweep found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Objects older than the grace period.
    pub checked: u64,
    /// Of those, the ones no entry references (removed unless a dry run).
    pub unreferenced: u64,
    /// Parts of incomplete local uploads older than the grace period (removed unless a dry
    /// run).
    pub stale_parts: u64,
    /// Packs older than the grace period at least half of whose bytes no entry uses any
    /// more (a replaced video's, one that failed its checksum). Unless a dry run, the videos
    /// still used are moved out into new packs, and each such pack is kept for another
    /// grace period (a read that had looked up a video's old place finishes first, a
    /// database restored to before the move still finds it), then removed as unreferenced.
    pub repacked: u64,
    /// Videos moved out of those packs.
    pub moved: u64,
    /// Bytes of those packs no entry uses: what removing them frees.
    pub reclaimable_bytes: u64,
    /// Groups of packs whose videos could not be moved (the disk or the database failed;
    /// logged): they are tried again at the next sweep.
    pub repack_failures: u64,
    /// Nothing was removed or moved.
    pub dry_run: bool,
}

/// Sweeps once; `None` when another sweeper is at work.
pub async fn sweep(
    storage: &Storage,
    pool: &Pool,
    grace: Duration,
    dry_run: bool,
) -> anyhow::Result<Option<Report>> {
    locks::while_sweep_locked(pool, sweep_locked(storage, pool, grace, dry_run)).await
}

/// Sweeps unless another sweeper is at work or a sweep (a worker's or a command's) finished
/// less than `interval` ago: `None` then. What each worker does every interval, so that a
/// fleet sweeps about once per interval, not once per worker.
pub async fn sweep_if_due(
    storage: &Storage,
    pool: &Pool,
    grace: Duration,
    interval: Duration,
) -> anyhow::Result<Option<Report>> {
    let swept = locks::while_sweep_locked(pool, async {
        let client = pool.get().await.context("connecting to sweep")?;
        if sweeps::finished_within(&client, interval).await? {
            return Ok(None);
        }
        drop(client);
        sweep_locked(storage, pool, grace, false).await.map(Some)
    })
    .await?;
    Ok(swept.flatten())
}

async fn sweep_locked(
    storage: &Storage,
    pool: &Pool,
    grace: Duration,
    dry_run: bool,
) -> anyhow::Result<Report> {
    let before = chrono::Utc::now()
        - chrono::Duration::from_std(grace).context("the grace period is too long")?;
    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    let mut repack = Repack::default();
    let mut pages = std::pin::pin!(storage.objects_before(before).chunks(PAGE));
    while let Some(page) = pages.next().await {
        let objects = page
            .into_iter()
            .collect::<Result<Vec<StoredObject>, _>>()
            .context("listing stored objects")?;
        report.checked += objects.len() as u64;
        let keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
        let client = pool.get().await.context("connecting to check objects")?;
        let unused = entries::unreferenced(&client, &keys).await?;
        let unused_set: std::collections::HashSet<&String> = unused.iter().collect();
        let packs: Vec<&StoredObject> = objects
            .iter()
            .filter(|o| storage.packs_small_files() && Location::is_pack(&o.key))
            .filter(|o| !unused_set.contains(&o.key))
            .collect();
        let pack_keys: Vec<String> = packs.iter().map(|o| o.key.clone()).collect();
        let usage = match pack_keys.is_empty() {
            true => Default::default(),
            false => entries::pack_usage(&client, &pack_keys).await?,
        };
        drop(client);
        report.unreferenced += unused.len() as u64;
        if !dry_run {
            for key in &unused {
                storage.remove(key).await;
            }
        }
        for pack in packs {
            let Some(&used) = usage.get(&pack.key) else {
                continue;
            };
            if !worth_repacking(pack.size, used) {
                continue;
            }
            report.repacked += 1;
            report.reclaimable_bytes += pack.size.saturating_sub(used);
            if dry_run {
                continue;
            }
            if repack.bytes + used > REPACK_BYTES {
                repack.flush(storage, pool, &mut report).await;
            }
            repack.packs.push(pack.key.clone());
            repack.bytes += used;
        }
    }
    repack.flush(storage, pool, &mut report).await;
    report.stale_parts = storage
        .stale_parts(before, dry_run)
        .await
        .context("removing incomplete uploads")?;
    if !dry_run {
        let client = pool.get().await.context("connecting to note the sweep")?;
        sweeps::record_finished(&client).await?;
    }
    Ok(report)
}

/// Whether a pack of `size` bytes of which entries use `used` is worth rewriting: at least
/// half of it is used by nothing. (A pack nothing uses is removed instead.)
fn worth_repacking(size: u64, used: u64) -> bool {
    used > 0 && used.saturating_mul(2) <= size
}

/// Packs whose videos are to move into one new pack, gathered until they fill one.
#[derive(Default)]
struct Repack {
    packs: Vec<String>,
    /// The bytes entries use of them.
    bytes: u64,
}

impl Repack {
    /// Moves the videos entries keep in the gathered packs into one new pack and points
    /// their entries at it, and counts what it did in `report`. A failure is logged and
    /// counted, and the sweep goes on: removing what nothing references matters most when
    /// the disk is full, which is when a new pack cannot be written.
    async fn flush(&mut self, storage: &Storage, pool: &Pool, report: &mut Report) {
        let packs = std::mem::take(&mut self.packs);
        self.bytes = 0;
        if packs.is_empty() {
            return;
        }
        match move_videos(storage, pool, &packs).await {
            Ok(moved) => report.moved += moved,
            Err(error) => {
                report.repack_failures += 1;
                tracing::warn!(
                    error = %format!("{error:#}"),
                    packs = packs.len(),
                    "could not move the videos of mostly unused packs; trying again at the next sweep"
                );
            }
        }
    }
}

/// Moves the videos entries keep in `packs` into one new pack and points their entries at
/// it; returns how many moved. A video whose bytes are no longer what its entry says (cut
/// short, changed) stays where it is, for `storage verify` to report. The old packs are
/// touched first, so that the sweeper keeps them for another grace period.
async fn move_videos(storage: &Storage, pool: &Pool, packs: &[String]) -> anyhow::Result<u64> {
    let client = pool.get().await.context("connecting to move videos")?;
    let assets = entries::assets_in_packs(&client, packs).await?;
    drop(client);
    let mut moving = Vec::with_capacity(assets.len());
    let mut bytes = Vec::with_capacity(assets.len());
    for asset in assets {
        let len = u64::try_from(asset.size).unwrap_or(0);
        match storage.read(&asset.key, 0..len).await {
            Ok(read) if read.len() as u64 == len && sha256_hex(&read) == asset.sha256 => {
                moving.push(asset);
                bytes.push(read);
            }
            Ok(_) => tracing::warn!(
                key = %asset.key,
                "a packed video's bytes differ from its entry's; left where it is (storage verify reports it)"
            ),
            Err(error) => tracing::warn!(
                key = %asset.key,
                %error,
                "a packed video could not be read; left where it is (storage verify reports it)"
            ),
        }
    }
    if moving.is_empty() {
        return Ok(0);
    }
    let keys = storage
        .pack(&bytes)
        .await
        .context("writing a new pack for the videos of mostly unused packs")?;
    for pack in packs {
        storage
            .touch(pack)
            .await
            .with_context(|| format!("keeping {pack} for another grace period"))?;
    }
    let moves: Vec<_> = moving.into_iter().zip(keys).collect();
    let client = pool.get().await.context("connecting to move videos")?;
    entries::move_assets(&client, &moves).await
}

/// The hex SHA-256 of `bytes`, as entries keep it.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Looks every `interval` until `shutdown`, and sweeps when no sweep finished within it.
pub async fn every(
    storage: Storage,
    pool: Pool,
    grace: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match sweep_if_due(&storage, &pool, grace, interval).await {
            Ok(Some(report))
                if report.unreferenced > 0
                    || report.stale_parts > 0
                    || report.repacked > 0
                    || report.repack_failures > 0 =>
            {
                tracing::info!(
                    ?report,
                    "removed stored objects no entry references, moved the videos of mostly unused packs"
                );
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "the storage sweep failed; trying again at the next interval");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_is_rewritten_once_at_least_half_of_it_is_unused() {
        assert!(worth_repacking(100, 50));
        assert!(worth_repacking(100, 1));
        assert!(!worth_repacking(100, 51));
        assert!(!worth_repacking(100, 100));
        // Nothing used: the pack is removed, not rewritten.
        assert!(!worth_repacking(100, 0));
        // A pack cut short (entries claim more than it holds) is left for `storage verify`.
        assert!(!worth_repacking(10, 40));
    }
}
