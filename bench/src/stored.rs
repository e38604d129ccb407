//! Scenario 1b: the import's storage path alone. The files of scenario 1's videos go through
//! `Storage` as a worker's downloads do (64 uploads at once on this process's runtime, small
//! files written and synced in groups, `storage.sync_writers` at 1, 4 and 16), against the
//! raw loop of the stored-files baseline (threads that create, write and fsync files
//! themselves) before and after: what the import's own way of storing a small file costs
//! beside the least that storing it durably can cost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use video_import_shared::config::{Settings, StorageSettings};
use video_import_shared::storage::Storage;
use video_import_tests::videos::fixture;

use crate::baseline::{self, FilesRate};
use crate::Row;

/// Uploads under way at once, as in a worker of scenario 1 (`fetch.concurrency` 64).
const UPLOADS_AT_ONCE: usize = 64;
/// The `storage.sync_writers` values measured.
const SYNC_WRITERS: [usize; 3] = [1, 4, 16];

/// Scenario 1b (see the module's comment).
pub async fn storage_path() -> anyhow::Result<Vec<Row>> {
    let size = fixture("bench16k.mp4").len();
    let folder =
        |what: &str| std::env::temp_dir().join(format!("vib-stored-{}-{what}", std::process::id()));
    let raw_before = baseline::stored_files(&folder("raw-before"), size)?;
    println!("raw loop before: {}", described(&raw_before));
    let mut measured = Vec::new();
    for writers in SYNC_WRITERS {
        let rate = through_storage(&folder(&format!("writers-{writers}")), size, writers).await?;
        println!("storage.sync_writers = {writers}: {}", described(&rate));
        measured.push((writers, rate));
    }
    let raw_after = baseline::stored_files(&folder("raw-after"), size)?;
    println!("raw loop after: {}", described(&raw_after));
    let raw = baseline::Bracket {
        before: raw_before.per_second,
        after: raw_after.per_second,
    };
    let raw_us = (raw_before.machine_us + raw_after.machine_us) / 2.0;
    Ok(measured
        .into_iter()
        .map(|(writers, rate)| Row {
            scenario: match writers {
                1 => "1b storage path, sync_writers 1",
                4 => "1b storage path, sync_writers 4 (default)",
                _ => "1b storage path, sync_writers 16",
            },
            figure: described(&rate),
            baseline: format!(
                "raw loop ({} threads, fsync each): {}, {raw_us:.0} µs of machine CPU per file (mean)",
                baseline::FILE_WRITERS,
                raw.describe("files/s"),
            ),
            ratio: format!(
                "{:.2} × the raw rate (mean), {:.2} × its CPU per file",
                rate.per_second / raw.mean(),
                rate.machine_us / raw_us
            ),
            target: "informative: what scenario 1's stored file costs the import",
        })
        .collect())
}

/// Files per second and CPU per file, as printed.
fn described(rate: &FilesRate) -> String {
    format!(
        "{:.0} files/s, {:.0} µs of machine CPU per file",
        rate.per_second, rate.machine_us
    )
}

/// Uploads [`baseline::STORED_FILES`] files of `size` bytes through local `Storage` in
/// `root` with `writers` group writers, [`UPLOADS_AT_ONCE`] at a time.
async fn through_storage(
    root: &std::path::Path,
    size: usize,
    writers: usize,
) -> anyhow::Result<FilesRate> {
    let storage = Storage::open(&StorageSettings {
        root: root.display().to_string(),
        sync_writers: writers,
        ..Settings::default().storage
    })
    .await?;
    video_import_tests::remove_folder(root.to_path_buf());
    let body = bytes::Bytes::from(vec![0x5a_u8; size]);
    let next = Arc::new(AtomicUsize::new(0));
    let busy = crate::polling::machine_busy_seconds();
    let started = Instant::now();
    let uploads: Vec<_> = (0..UPLOADS_AT_ONCE)
        .map(|_| {
            let (storage, body, next) = (storage.clone(), body.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= baseline::STORED_FILES {
                        return anyhow::Ok(());
                    }
                    // Keys as the worker makes them: a folder per project, a fresh name each.
                    let key = format!("1/{}.mp4", video_import_shared::ids::random_id(16));
                    let mut upload = storage.upload(&key).await?;
                    upload.write(&body).await?;
                    upload.finish().await?;
                }
            })
        })
        .collect();
    for upload in uploads {
        upload.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let busy = crate::polling::machine_busy_seconds() - busy;
    Ok(FilesRate {
        per_second: baseline::STORED_FILES as f64 / seconds,
        machine_us: busy * 1e6 / baseline::STORED_FILES as f64,
    })
}
