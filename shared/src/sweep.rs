//! The storage sweeper: removes stored objects that no media-library entry references once
//! they are older than a grace period. They are left by a process that stopped between an
//! upload and its commit (killed, or its database went away); a replaced or unused asset is
//! removed on the spot otherwise. One sweeper runs at a time (a PostgreSQL advisory lock).

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::storage::Storage;
use crate::store::{entries, locks};

/// Keys checked against the database per query.
const PAGE: usize = 1000;

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
    /// Nothing was removed.
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
    let mut pages = std::pin::pin!(storage.objects_before(before).chunks(PAGE));
    while let Some(page) = pages.next().await {
        let keys = page
            .into_iter()
            .collect::<Result<Vec<String>, _>>()
            .context("listing stored objects")?;
        report.checked += keys.len() as u64;
        let client = pool.get().await.context("connecting to check objects")?;
        let unused = entries::unreferenced(&client, &keys).await?;
        drop(client);
        report.unreferenced += unused.len() as u64;
        if !dry_run {
            for key in &unused {
                storage.remove(key).await;
            }
        }
    }
    report.stale_parts = storage
        .stale_parts(before, dry_run)
        .await
        .context("removing incomplete uploads")?;
    Ok(report)
}

/// Sweeps every `interval` until `shutdown`.
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
        match sweep(&storage, &pool, grace, false).await {
            Ok(Some(report)) if report.unreferenced > 0 || report.stale_parts > 0 => {
                tracing::info!(?report, "removed stored objects no entry references");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "the storage sweep failed; trying again at the next interval");
            }
        }
    }
}
