//! Scenario 11, a real archive at the disk's rate: 2,000 videos whose sizes spread from
//! 1 MiB to 128 MiB (about 8 GiB, the same sizes every run), imported by two workers,
//! against `curl --parallel` fetching the same files into the same filesystem and syncing
//! them, before and after the import.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use video_import_tests::videos::fixture;
use video_import_tests::Stack;

use crate::baseline::{self, Bracket};
use crate::polling::cpu_seconds;
use crate::scenarios::{imported, options, peak_rss_mib, post};
use crate::servers::{self, Counter};
use crate::Row;

const VIDEOS: usize = 2_000;
const MIB: u64 = 1024 * 1024;
/// Downloads at once per worker; curl gets as many as both workers together.
const PER_WORKER: usize = 16;
/// The spread's tail: a Pareto distribution (shape 1.1) cut to 1–128 MiB, so most files are
/// a few MiB and a few are large, as in a broadcaster's archive: median about 1.9 MiB,
/// mean about 4.2 MiB, about a dozen above 64 MiB.
const SHAPE: f64 = 1.1;
const SEED: u64 = 0x5eed_2026;

/// splitmix64: the same sizes on every machine and with every version of `rand`.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The sizes of the scenario's videos, in bytes.
pub fn sizes(n: usize, seed: u64) -> Vec<u64> {
    let mut state = seed;
    let cut = 1.0 - 128f64.powf(-SHAPE);
    (0..n)
        .map(|_| {
            let u = (next(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
            let mib = (1.0 - u * cut).powf(-1.0 / SHAPE);
            (mib * MIB as f64) as u64
        })
        .collect()
}

/// Scenario 11.
pub async fn archive_disk() -> anyhow::Result<Vec<Row>> {
    let sizes = sizes(VIDEOS, SEED);
    let total: u64 = sizes.iter().sum();
    let largest = sizes.iter().max().copied().unwrap_or(0);
    println!(
        "{VIDEOS} videos, {:.2} GiB in all, largest {:.0} MiB",
        total as f64 / (1024.0 * MIB as f64),
        largest as f64 / MIB as f64
    );
    let per_worker = PER_WORKER.to_string();
    let stack = Stack::start(options(
        2,
        true,
        &[
            ("VIDEO_IMPORT__FETCH__CONCURRENCY", &per_worker),
            ("VIDEO_IMPORT__FETCH__PER_HOST_CONCURRENCY", &per_worker),
        ],
    ))
    .await;
    let project = stack.project("bench").await;
    let sizes = Arc::new(sizes);
    let base = servers::sized_videos(Bytes::from(fixture("bench16k.mp4")), sizes.clone()).await;
    let files: Vec<(String, String)> = (0..VIDEOS)
        .map(|i| (format!("{base}/s/{i}"), format!("c{i}.mp4")))
        .collect();
    // Beside the workers' storage root (`stack.dir/videos`): the same filesystem.
    let raw_dir = stack.dir.join("curl");

    // The virtual disk absorbs the first gigabytes it is given far faster than it writes
    // them for good: one unmeasured pass first, so that every measured one (curl before,
    // the import, curl after) starts from the same, busy state of the disk.
    let warm = baseline::curl_parallel(&files, &raw_dir, 2 * PER_WORKER)?;
    println!(
        "curl --parallel-max {} + fsync, warm-up (not counted): {:.0} MiB/s",
        2 * PER_WORKER,
        warm / MIB as f64
    );
    baseline::checkpoint()?;
    let before = baseline::curl_parallel(&files, &raw_dir, 2 * PER_WORKER)?;
    println!(
        "curl --parallel-max {} + fsync, before: {:.0} MiB/s",
        2 * PER_WORKER,
        before / MIB as f64
    );

    let pids: Vec<u32> = ["worker0", "worker1"]
        .iter()
        .filter_map(|w| stack.pid(w))
        .collect();
    baseline::checkpoint()?;
    let receiver = Counter::start(false).await;
    let cpu_before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let started = Instant::now();
    for b in 0..VIDEOS / 500 {
        let videos: Vec<_> = (b * 500..(b + 1) * 500)
            .map(|i| json!({"url": files[i].0, "id": format!("v{i}"), "fileName": "f", "metadata": {}}))
            .collect();
        post(
            &stack,
            &project,
            &json!({"systemName": "archive", "webhook": receiver.url, "videos": videos}),
        )
        .await?;
    }
    let last = receiver
        .wait_for((VIDEOS / 500) as u64, Duration::from_secs(1800))
        .await?;
    let elapsed = (last - started).as_secs_f64();
    let done = imported(&stack).await;
    anyhow::ensure!(done == VIDEOS as i64, "{done} of {VIDEOS} imported");
    let rate = total as f64 / elapsed;
    let peak = pids.iter().map(|p| peak_rss_mib(*p)).fold(0.0, f64::max);
    let cpu: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu_before;
    println!(
        "import: {:.0} MiB/s ({elapsed:.1} s), worker peak RSS {peak:.1} MiB, workers' CPU {:.2} cores ({:.1} ms per MiB)",
        rate / MIB as f64,
        cpu / elapsed,
        cpu * 1e3 / (total as f64 / MIB as f64)
    );

    baseline::checkpoint()?;
    let after = baseline::curl_parallel(&files, &raw_dir, 2 * PER_WORKER)?;
    println!(
        "curl --parallel-max {} + fsync, after: {:.0} MiB/s",
        2 * PER_WORKER,
        after / MIB as f64
    );
    stack.finish().await;
    let raw = Bracket { before, after };
    let mib = |b: f64| b / MIB as f64;
    Ok(vec![Row {
        scenario: "11 archive at the disk's rate: 2,000 videos of 1–128 MiB (≈ 8 GiB), 2 workers × 16",
        figure: format!("{:.0} MiB/s, worker peak RSS {peak:.0} MiB", mib(rate)),
        baseline: format!(
            "curl --parallel-max {} into the same filesystem, fsynced: {:.0} before, {:.0} after (mean {:.0}) MiB/s",
            2 * PER_WORKER,
            mib(raw.before),
            mib(raw.after),
            mib(raw.mean())
        ),
        ratio: format!("{:.2} of curl (mean)", rate / raw.mean()),
        target: "≥ 0.8 of curl, worker RSS < 128 MiB",
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sizes_are_the_same_every_run_and_spread_as_documented() {
        let a = sizes(VIDEOS, SEED);
        assert_eq!(a, sizes(VIDEOS, SEED));
        assert!(a.iter().all(|s| (MIB..=128 * MIB).contains(s)));
        let total: u64 = a.iter().sum();
        let gib = total as f64 / (1024.0 * MIB as f64);
        assert!((6.0..11.0).contains(&gib), "{gib} GiB");
    }
}
