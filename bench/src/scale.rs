//! The archive-scale scenarios: a large library, fairness between projects, and politeness
//! to a source host.

use std::time::{Duration, Instant};

use bytes::Bytes;
use video_import_tests::videos::fixture;
use video_import_tests::Stack;

use crate::scenarios::{batch, options, post, Growth};
use crate::servers::{self, Counter};
use crate::Row;

/// Download slots per worker in these scenarios (as in scenario 1).
const CONCURRENCY: (&str, &str) = ("VIDEO_IMPORT__FETCH__CONCURRENCY", "64");

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// What one run of the archive-size scenario measured.
struct ArchiveRun {
    rate: f64,
    post_p50: Duration,
    post_p99: Duration,
    status_p50: Duration,
    status_p99: Duration,
}

/// Scenario 7: the same 10,000 videos into an empty library and into one holding 1,000,000
/// entries and 10,000 finished jobs (loaded with SQL): import rate, POST p99, status p99.
pub async fn archive_size() -> anyhow::Result<Vec<Row>> {
    let empty = archive_run(false).await?;
    let full = archive_run(true).await?;
    let change = |a: f64, b: f64| format!("{:+.0} %", (b / a - 1.0) * 100.0);
    Ok(vec![Row {
        scenario: "7 archive size: 10,000 videos (100 batches of 100) into a library of 1,000,000 entries and 10,000 finished jobs",
        figure: format!(
            "{:.0} videos/s, POST p50 {} p99 {}, status p50 {} p99 {}",
            full.rate,
            ms(full.post_p50),
            ms(full.post_p99),
            ms(full.status_p50),
            ms(full.status_p99)
        ),
        baseline: format!(
            "empty library, same run: {:.0} videos/s, POST p50 {} p99 {}, status p50 {} p99 {}",
            empty.rate,
            ms(empty.post_p50),
            ms(empty.post_p99),
            ms(empty.status_p50),
            ms(empty.status_p99)
        ),
        ratio: format!(
            "rate {}, POST p99 {}, status p99 {}",
            change(empty.rate, full.rate),
            change(
                empty.post_p99.as_secs_f64(),
                full.post_p99.as_secs_f64()
            ),
            change(
                empty.status_p99.as_secs_f64(),
                full.status_p99.as_secs_f64()
            )
        ),
        target: "each within 20 %",
    }])
}

async fn archive_run(preload: bool) -> anyhow::Result<ArchiveRun> {
    let mut stack = Stack::start(options(0, true, &[CONCURRENCY])).await;
    let project = stack.project("bench").await;
    if preload {
        let loading = Instant::now();
        load_archive(&stack, &project.handle).await;
        println!(
            "loaded 1,000,000 entries and 10,000 finished jobs in {:.0} s",
            loading.elapsed().as_secs_f64()
        );
    }
    // Both runs start from a checkpoint, so that neither pays for the other's dirty pages
    // (the load's, in the large library) nor escapes the full-page writes after one.
    stack.sql("CHECKPOINT").await;
    let base = servers::videos(Bytes::from(fixture("bench16k.mp4")), Duration::ZERO).await;
    let receiver = Counter::start(false).await;
    // Accepting and reading are measured before the workers start, so they measure the
    // database's size and not a busy machine.
    let mut posts = Vec::new();
    let mut jobs = Vec::new();
    for b in 0..100 {
        let t = Instant::now();
        jobs.push(
            post(
                &stack,
                &project,
                &batch(&base, b * 100, 100, Some(&receiver.url)),
            )
            .await?,
        );
        posts.push(t.elapsed());
    }
    let mut reads = Vec::new();
    for job in jobs.iter().chain(&jobs).chain(&jobs) {
        let t = Instant::now();
        let status = stack.status(&project.token, job).await;
        reads.push(t.elapsed());
        anyhow::ensure!(status["overview"]["total"] == 100, "status: {status}");
    }
    let started = Instant::now();
    stack.spawn_worker().await;
    stack.spawn_worker().await;
    let last = receiver.wait_for(100, Duration::from_secs(900)).await?;
    let rate = 10_000.0 / (last - started).as_secs_f64();
    let run = ArchiveRun {
        rate,
        post_p50: percentile(&mut posts, 0.5),
        post_p99: percentile(&mut posts, 0.99),
        status_p50: percentile(&mut reads, 0.5),
        status_p99: percentile(&mut reads, 0.99),
    };
    println!(
        "{}: {:.0} videos/s, POST p50 {} p99 {}, status p50 {} p99 {}",
        if preload {
            "1,000,000 entries"
        } else {
            "empty library"
        },
        run.rate,
        ms(run.post_p50),
        ms(run.post_p99),
        ms(run.status_p50),
        ms(run.status_p99)
    );
    stack.finish().await;
    Ok(run)
}

/// Loads a million entries and 10,000 finished jobs of ten videos each into the project.
async fn load_archive(stack: &Stack, handle: &str) {
    let id: i64 = stack
        .sql(&format!(
            "SELECT id FROM projects WHERE handle = '{handle}'"
        ))
        .await[0]
        .get(0);
    for sql in [
        format!(
            "INSERT INTO media_entries (id, project_id, system_name, external_id, file_name,
                 metadata, asset_key, asset_size, mime_type, sha256, original_url)
             SELECT 'pre' || g, {id}, 'archive', 'pre-' || g, 'f', '{{\"title\": \"t\"}}',
                 'pre/' || g, 16369, 'video/mp4', md5(g::text), 'http://archive.example/' || g
             FROM generate_series(1, 1000000) g"
        ),
        format!(
            "INSERT INTO jobs (id, project_id, system_name, state, total, pending, imported,
                 started_at, finished_at)
             SELECT 'prejob' || g, {id}, 'archive', 'success', 10, 0, 10,
                 now() - interval '2 days', now() - interval '2 days'
             FROM generate_series(1, 10000) g"
        ),
        "INSERT INTO job_items (job_id, idx, external_id, url, file_name, metadata, state, media_id)
         SELECT 'prejob' || j, i, 'pre-' || (j * 10 + i), 'http://archive.example/x', 'f', '{}',
             'imported', 'pre' || (j * 10 + i)
         FROM generate_series(1, 10000) j, generate_series(0, 9) i"
            .into(),
        "VACUUM ANALYZE".into(),
    ] {
        stack.sql(&sql).await;
    }
}

/// Scenario 8: project A queues 100,000 videos; project B posts 5 videos every second while
/// A imports. B's batches' time from POST to finished, and A's rate beside A alone.
pub async fn fairness() -> anyhow::Result<Vec<Row>> {
    let (alone, _) = fair_run(false).await?;
    let (shared, mut waits) = fair_run(true).await?;
    let first = waits[0];
    let p50 = percentile(&mut waits, 0.5);
    let most = *waits.last().expect("B posted batches");
    Ok(vec![Row {
        scenario: "8 fairness: project B posts 5 videos every second behind 100,000 queued videos of project A",
        figure: format!(
            "B's first batch done in {:.2} s; B's {} batches p50 {:.2} s, max {:.2} s; A {shared:.0} videos/s",
            first.as_secs_f64(),
            waits.len(),
            p50.as_secs_f64(),
            most.as_secs_f64()
        ),
        baseline: format!("A alone, same run: {alone:.0} videos/s"),
        ratio: format!("A {:+.1} %", (shared / alone - 1.0) * 100.0),
        target: "B < 5 s; A drops < 10 %",
    }])
}

/// A's rate, and how long each of B's batches took (empty without B).
async fn fair_run(with_b: bool) -> anyhow::Result<(f64, Vec<Duration>)> {
    let stack = Stack::start(options(2, true, &[CONCURRENCY])).await;
    let a = stack.project("archive-a").await;
    let b = stack.project("newsroom-b").await;
    let base = servers::videos(Bytes::from(fixture("bench16k.mp4")), Duration::ZERO).await;
    let receiver = Counter::start(false).await;
    let started = Instant::now();
    for n in 0..100 {
        post(
            &stack,
            &a,
            &batch(&base, n * 1000, 1000, Some(&receiver.url)),
        )
        .await?;
    }
    println!(
        "A: 100,000 videos accepted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut waits = Vec::new();
    let mut n = 0;
    while receiver.count() < 100 {
        if !with_b {
            tokio::time::sleep(Duration::from_millis(50)).await;
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(900),
                "A did not finish"
            );
            continue;
        }
        let posted = Instant::now();
        let job = post(&stack, &b, &batch(&base, 1_000_000 + n * 5, 5, None)).await?;
        n += 1;
        loop {
            let status = stack.status(&b.token, &job).await;
            if status["finished"] == true {
                anyhow::ensure!(status["overview"]["imported"] == 5, "B: {status}");
                break;
            }
            anyhow::ensure!(
                posted.elapsed() < Duration::from_secs(300),
                "B waits: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        waits.push(posted.elapsed());
        let next = posted + Duration::from_secs(1);
        tokio::time::sleep_until(next.into()).await;
    }
    let last = receiver.last().await.unwrap_or_else(Instant::now);
    let rate = 100_000.0 / (last - started).as_secs_f64();
    println!(
        "A {}: {rate:.0} videos/s{}",
        if with_b { "beside B" } else { "alone" },
        if with_b {
            format!(
                "; B's first batch took {:.2} s",
                waits.first().map_or(0.0, |w| w.as_secs_f64())
            )
        } else {
            String::new()
        }
    );
    stack.finish().await;
    Ok((rate, waits))
}

/// Scenario 9: 2,000 videos from one host that answers after 50 ms, with
/// `fetch.per_host_concurrency` 4 and two workers of 64 slots: the host never sees more than
/// 8 requests at once, and the rate stays near what that allows (8 / 50 ms = 160/s).
pub async fn polite() -> anyhow::Result<Vec<Row>> {
    let total = 2_000;
    let stack = Stack::start(options(
        2,
        true,
        &[
            CONCURRENCY,
            ("VIDEO_IMPORT__FETCH__PER_HOST_CONCURRENCY", "4"),
        ],
    ))
    .await;
    let project = stack.project("bench").await;
    let (base, concurrency) = servers::counted_videos(
        Bytes::from(fixture("bench16k.mp4")),
        Duration::from_millis(50),
    )
    .await;
    let receiver = Counter::start(false).await;
    let started = Instant::now();
    for b in 0..total / 1000 {
        post(
            &stack,
            &project,
            &batch(&base, b * 1000, 1000, Some(&receiver.url)),
        )
        .await?;
    }
    let last = receiver
        .wait_for((total / 1000) as u64, Duration::from_secs(600))
        .await?;
    let rate = total as f64 / (last - started).as_secs_f64();
    let bound = 2.0 * 4.0 / 0.05;
    println!(
        "{total} videos from one host: {rate:.0} videos/s, at most {} requests at once",
        concurrency.most()
    );
    stack.finish().await;
    Ok(vec![Row {
        scenario: "9 polite: 2,000 videos from one host answering after 50 ms, per_host_concurrency 4, 2 workers",
        figure: format!(
            "{rate:.0} videos/s, at most {} requests at once",
            concurrency.most()
        ),
        baseline: format!("bound: 2 workers × 4 / 50 ms = {bound:.0}/s, 8 at once"),
        ratio: format!("{:.2} of the bound", rate / bound),
        target: "≤ 8 at once; ≥ 0.8 of the bound",
    }])
}

/// Scenario 13, fairness as the tenants grow: 20,000 videos shared equally by 1, 10 and 100
/// projects (their batches posted round-robin), 2 workers: the per-video cost, and when the
/// first and the last project finished (equal shares dispatched fairly finish together).
pub async fn fairness_growth(counts: &[usize]) -> anyhow::Result<Vec<Row>> {
    let total = 20_000usize;
    let mut runs = Vec::new();
    for &projects in counts {
        runs.push((projects, fair_projects_run(projects, total).await?));
    }
    let costs: Vec<f64> = runs.iter().map(|(_, r)| 1e6 / r.rate).collect();
    let Growth { low, high, step } = Growth::of(&costs);
    // The machine's CPU per video too: the wall time of a few seconds' run moves with what
    // else the VM's host does, the CPU a video takes much less.
    let cpu: Vec<f64> = runs.iter().map(|(_, r)| r.machine_cpu).collect();
    let cpu_growth = Growth::of(&cpu);
    let figure = runs
        .iter()
        .zip(&costs)
        .map(|((p, r), c)| {
            format!(
                "{p} projects: {:.0} videos/s ({c:.0} µs/video, {:.0} µs of machine CPU), projects done between {:.1} and {:.1} s",
                r.rate, r.machine_cpu, r.first_done, r.last_done
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Ok(vec![Row {
        scenario: "13 fairness growth: 20,000 videos shared by 1, 10, 100 projects, 2 workers",
        figure,
        baseline: format!("the cheapest run: {low:.0} µs/video"),
        ratio: format!(
            "dearest / cheapest {:.2}; per video with 10 × the projects: {step:.2} × at most; machine CPU per video: dearest / cheapest {:.2}, with 10 × the projects {:.2} × at most",
            high / low,
            cpu_growth.high / cpu_growth.low,
            cpu_growth.step
        ),
        target: "per-video cost stays within 20 % as the projects grow",
    }])
}

/// What one run of [`fairness_growth`] measured.
struct SharedRun {
    rate: f64,
    /// Seconds from the first POST to the first and the last project's last job finishing.
    first_done: f64,
    last_done: f64,
    /// Microseconds of the machine's CPU per video.
    machine_cpu: f64,
}

async fn fair_projects_run(projects: usize, total: usize) -> anyhow::Result<SharedRun> {
    let stack = Stack::start(options(2, true, &[CONCURRENCY])).await;
    let mut tenants = Vec::new();
    for p in 0..projects {
        tenants.push(stack.project(&format!("tenant-{p}")).await);
    }
    let base = servers::videos(Bytes::from(fixture("bench16k.mp4")), Duration::ZERO).await;
    let receiver = Counter::start(false).await;
    let share = total / projects;
    let per_batch = share.min(1000);
    let batches = share / per_batch;
    stack.sql("CHECKPOINT").await;
    let workers: Vec<u32> = ["worker0", "worker1"]
        .iter()
        .filter_map(|w| stack.pid(w))
        .collect();
    let workers_cpu = || -> f64 {
        workers
            .iter()
            .map(|p| crate::polling::cpu_seconds(*p))
            .sum()
    };
    let (busy_before, workers_before) = (crate::polling::machine_busy_seconds(), workers_cpu());
    let started = Instant::now();
    let since = chrono::Utc::now();
    for b in 0..batches {
        for (p, tenant) in tenants.iter().enumerate() {
            let from = p * share + b * per_batch;
            post(
                &stack,
                tenant,
                &batch(&base, from, per_batch, Some(&receiver.url)),
            )
            .await?;
        }
    }
    let accepted = started.elapsed().as_secs_f64();
    let last = receiver
        .wait_for((batches * projects) as u64, Duration::from_secs(1800))
        .await?;
    let rate = total as f64 / (last - started).as_secs_f64();
    let machine_cpu = (crate::polling::machine_busy_seconds() - busy_before) * 1e6 / total as f64;
    let worker_cpu = (workers_cpu() - workers_before) * 1e6 / total as f64;
    let rows = stack
        .sql(&format!(
            "SELECT extract(epoch FROM min(done) - '{since}'::timestamptz)::float8,
                    extract(epoch FROM max(done) - '{since}'::timestamptz)::float8
             FROM (SELECT project_id, max(finished_at) AS done FROM jobs GROUP BY project_id) p"
        ))
        .await;
    let (first_done, last_done): (f64, f64) = (rows[0].get(0), rows[0].get(1));
    println!(
        "{projects} projects × {share} videos: accepted in {accepted:.2} s, {rate:.0} videos/s, projects done between {first_done:.1} and {last_done:.1} s; CPU per video: {machine_cpu:.0} µs in all (the machine), {worker_cpu:.0} µs in the workers"
    );
    stack.finish().await;
    Ok(SharedRun {
        rate,
        first_done,
        last_done,
        machine_cpu,
    })
}
