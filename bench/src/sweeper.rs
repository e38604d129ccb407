//! Scenario 15, the storage sweeper on a library of small videos (packed): a sweep with
//! nothing to do, one that moves the videos still used out of packs half of whose videos
//! were replaced, and the one that removes the old packs, each timed with the machine's CPU,
//! beside the import of the same library in the same run.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde_json::Value;
use video_import_tests::videos::fixture;
use video_import_tests::{files_below, Stack};

use crate::scenarios::{options, post_in_thousands};
use crate::servers::{self, Counter};
use crate::Row;

/// One `storage sweep` (no grace period): its report, its seconds and the machine's CPU
/// seconds meanwhile.
async fn timed_sweep(stack: &Stack) -> anyhow::Result<(Value, f64, f64)> {
    let busy = crate::polling::machine_busy_seconds();
    let started = Instant::now();
    let out = stack
        .api_cli(&["storage", "sweep", "--grace-secs", "0"])
        .await;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(out.status.success(), "storage sweep failed: {}", out.stderr);
    let report = serde_json::from_str(&out.stdout).context("the sweep's report")?;
    Ok((report, secs, crate::polling::machine_busy_seconds() - busy))
}

/// Bytes stored below `root`.
fn stored_bytes(root: &std::path::Path) -> u64 {
    files_below(root)
        .iter()
        .filter_map(|f| std::fs::metadata(root.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// Scenario 15 with a library of `videos` videos of 16 KiB.
pub async fn sweeper(videos: usize) -> anyhow::Result<Vec<Row>> {
    let stack = Stack::start(options(
        2,
        true,
        &[
            ("VIDEO_IMPORT__FETCH__CONCURRENCY", "64"),
            ("VIDEO_IMPORT__STORAGE__SWEEP_INTERVAL_SECS", "0"),
        ],
    ))
    .await;
    let project = stack.project("bench").await;
    let base = servers::videos(Bytes::from(fixture("bench16k.mp4")), Duration::ZERO).await;
    let receiver = Counter::start(false).await;
    let started = Instant::now();
    let batches = post_in_thousands(&stack, &project, &base, videos, &receiver.url).await?;
    let last = receiver
        .wait_for(batches as u64, Duration::from_secs(1800))
        .await?;
    let import_rate = videos as f64 / (last - started).as_secs_f64();
    let root = stack.dir.join("videos");

    let (idle, idle_secs, idle_cpu) = timed_sweep(&stack).await?;
    // Half the videos replaced: their entries name other objects, and their bytes in the
    // packs are used by nothing.
    stack
        .sql("UPDATE media_entries SET asset_key = 'replaced/' || id WHERE hashtext(id) % 2 = 0")
        .await;
    let before = stored_bytes(&root);
    let (moving, move_secs, move_cpu) = timed_sweep(&stack).await?;
    let (removing, remove_secs, remove_cpu) = timed_sweep(&stack).await?;
    let after = stored_bytes(&root);
    let moved = moving["moved"].as_u64().unwrap_or(0);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let moved_mib = mib(moved * 16_369);
    println!(
        "{videos} videos imported at {import_rate:.0} videos/s; a sweep with nothing to do: {idle_secs:.2} s, {idle_cpu:.2} s of machine CPU ({} objects checked); moving the used videos out of {} packs half unused: {moved} videos ({moved_mib:.0} MiB) in {move_secs:.2} s, {move_cpu:.2} s CPU; removing the old packs: {} in {remove_secs:.2} s, {remove_cpu:.2} s CPU; stored {:.0} MiB → {:.0} MiB",
        idle["checked"],
        moving["repacked"],
        removing["unreferenced"],
        mib(before),
        mib(after),
    );
    stack.finish().await;
    let move_rate = moved as f64 / move_secs;
    Ok(vec![Row {
        scenario: "15 sweeper: a library of 16 KiB videos, packed; half of them replaced",
        figure: format!(
            "{videos} videos: a sweep with nothing to do {idle_secs:.2} s ({} objects); moving {moved} used videos out of {} packs {move_secs:.2} s ({move_rate:.0} videos/s, {:.1} MiB/s, {:.0} µs of machine CPU per video moved); removing the {} old packs {remove_secs:.2} s; stored {:.0} → {:.0} MiB",
            idle["checked"],
            moving["repacked"],
            moved_mib / move_secs,
            move_cpu * 1e6 / moved.max(1) as f64,
            removing["unreferenced"],
            mib(before),
            mib(after),
        ),
        baseline: format!("the import of the same library, same run: {import_rate:.0} videos/s"),
        ratio: format!("moving {:.2} × the import's rate", move_rate / import_rate),
        target: "informative: what the hourly sweep costs",
    }])
}
