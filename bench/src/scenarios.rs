//! The five scenarios of docs/benchmarks.md.

use anyhow::Context;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use video_import_tests::videos::fixture;
use video_import_tests::{Options, Project, Stack};

use crate::servers::{self, Answer, Counter};
use crate::{baseline, Row};

pub(crate) fn options(workers: usize, notifier: bool, extra: &[(&str, &str)]) -> Options {
    let mut env: Vec<(String, String)> = vec![
        ("VIDEO_IMPORT__LOG__FILTER".into(), "warn".into()),
        ("VIDEO_IMPORT__DATABASE__POOL_SIZE".into(), "16".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Options {
        workers,
        notifier,
        env,
        ..Options::default()
    }
}

pub(crate) fn batch(base: &str, from: usize, n: usize, webhook: Option<&str>) -> Value {
    let videos: Vec<Value> = (from..from + n)
        .map(|i| json!({"url": format!("{base}/v/{i}"), "id": format!("v{i}"), "fileName": "f", "metadata": {"title": "t"}}))
        .collect();
    let mut body = json!({"systemName": "archive", "videos": videos});
    if let Some(url) = webhook {
        body["webhook"] = json!(url);
    }
    body
}

pub(crate) async fn post(stack: &Stack, project: &Project, body: &Value) -> anyhow::Result<String> {
    let response = stack
        .http
        .post(format!("{}/api/v1/import/videos", stack.api_url))
        .bearer_auth(&project.token)
        .json(body)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "import answered {}",
        response.status()
    );
    Ok(response.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Posts `total` videos from `base` in batches of 1000, each with the webhook `webhook`;
/// returns how many batches (so many webhooks to wait for).
pub(crate) async fn post_in_thousands(
    stack: &Stack,
    project: &Project,
    base: &str,
    total: usize,
    webhook: &str,
) -> anyhow::Result<usize> {
    let batches = total.div_ceil(1000);
    for b in 0..batches {
        let n = (total - b * 1000).min(1000);
        post(stack, project, &batch(base, b * 1000, n, Some(webhook))).await?;
    }
    Ok(batches)
}

pub(crate) async fn imported(stack: &Stack) -> i64 {
    stack
        .sql("SELECT coalesce(sum(imported), 0)::bigint FROM jobs")
        .await[0]
        .get(0)
}

/// One run of scenario 1's shape: `total` real 16 KiB videos in batches of 1000 (1 api, 2
/// workers of 64 slots, 1 notifier), first POST to last webhook, in videos per second.
pub(crate) async fn end_to_end_run(total: usize) -> anyhow::Result<f64> {
    let stack = Stack::start(options(
        2,
        true,
        &[("VIDEO_IMPORT__FETCH__CONCURRENCY", "64")],
    ))
    .await;
    let project = stack.project("bench").await;
    let base = servers::videos(Bytes::from(fixture("bench16k.mp4")), Duration::ZERO).await;
    let receiver = Counter::start(false).await;
    // Every run starts from a checkpoint, so none pays for an earlier one's dirty pages.
    stack.sql("CHECKPOINT").await;
    let workers: Vec<u32> = ["worker0", "worker1"]
        .iter()
        .filter_map(|w| stack.pid(w))
        .collect();
    let busy_before = crate::polling::machine_busy_seconds();
    let workers_before: f64 = workers
        .iter()
        .map(|p| crate::polling::cpu_seconds(*p))
        .sum();
    let started = Instant::now();
    let batches = post_in_thousands(&stack, &project, &base, total, &receiver.url).await?;
    let accepted = started.elapsed();
    let last = receiver
        .wait_for(batches as u64, Duration::from_secs(1800))
        .await?;
    let elapsed = last - started;
    let done = imported(&stack).await;
    anyhow::ensure!(done == total as i64, "{done} of {total} imported");
    let rate = total as f64 / elapsed.as_secs_f64();
    let busy = crate::polling::machine_busy_seconds() - busy_before;
    let worker_cpu: f64 = workers
        .iter()
        .map(|p| crate::polling::cpu_seconds(*p))
        .sum::<f64>()
        - workers_before;
    println!(
        "{total} videos: accepted in {:.2} s, last webhook after {:.2} s: {rate:.0} videos/s; CPU per video: {:.0} µs in all (the machine), {:.0} µs in the workers",
        accepted.as_secs_f64(),
        elapsed.as_secs_f64(),
        busy * 1e6 / total as f64,
        worker_cpu * 1e6 / total as f64
    );
    stack.finish().await;
    Ok(rate)
}

/// Scenario 1: 10,000 real 16 KiB videos in batches of 1000; 1 api, 2 workers, 1 notifier;
/// the raw baselines before and after it, each after a checkpoint.
pub async fn end_to_end() -> anyhow::Result<Vec<Row>> {
    let total = 10_000;
    let minimal_before = baseline::minimal_after_checkpoint().await?;
    println!(
        "pgbench, the minimal per-video work (pg.sh), 8 clients, before: {minimal_before:.0} tx/s"
    );
    let amqp_before = baseline::lapin_loop(20_000).await?;
    println!("raw lapin publish (confirms) + consume (acks), quorum queue, before: {amqp_before:.0} msg/s");
    let video_size = fixture("bench16k.mp4").len();
    let files_dir =
        |when: &str| std::env::temp_dir().join(format!("vib-files-{}-{when}", std::process::id()));
    let files_before = baseline::stored_files(&files_dir("before"), video_size)?;
    println!(
        "{} files of {video_size} bytes created, written and fsynced by {} threads, before: {:.0} files/s, {:.0} µs of machine CPU per file",
        baseline::STORED_FILES,
        baseline::FILE_WRITERS,
        files_before.per_second,
        files_before.machine_us
    );

    let rate = end_to_end_run(total).await?;

    let minimal = baseline::Bracket {
        before: minimal_before,
        after: baseline::minimal_after_checkpoint().await?,
    };
    println!(
        "pgbench, the minimal per-video work (pg.sh): {}",
        minimal.describe("tx/s")
    );
    let amqp = baseline::Bracket {
        before: amqp_before,
        after: baseline::lapin_loop(20_000).await?,
    };
    println!("raw lapin: {}", amqp.describe("msg/s"));
    let tps = same_sql_pgbench().await?;
    println!("pgbench, the earlier per-video SQL, 16 clients: {tps:.0} tx/s");
    let files_after = baseline::stored_files(&files_dir("after"), video_size)?;
    let files = baseline::Bracket {
        before: files_before.per_second,
        after: files_after.per_second,
    };
    println!(
        "stored files (create, write, fsync): {}, {:.0} / {:.0} µs of machine CPU per file",
        files.describe("files/s"),
        files_before.machine_us,
        files_after.machine_us
    );
    // Each video needs both the minimal transaction and a stored file: done one after the
    // other on the same cores, they would reach this rate.
    let both = 1.0 / (1.0 / minimal.mean() + 1.0 / files.mean());
    Ok(vec![Row {
        scenario: "1 end to end",
        figure: format!("{rate:.0} videos/s"),
        baseline: format!(
            "minimal pgbench {}; stored files {}; both in turn {both:.0}/s; lapin {}; same-SQL pgbench {tps:.0} tx/s",
            minimal.describe("tx/s"),
            files.describe("files/s"),
            amqp.describe("msg/s")
        ),
        ratio: format!(
            "{:.2} of minimal (mean), {:.2} of both in turn, {:.2} of same-SQL, {:.2} of lapin (mean)",
            rate / minimal.mean(),
            rate / both,
            rate / tps,
            rate / amqp.mean()
        ),
        target: "≥ 1000/s and ≥ 1.0 of minimal pgbench (floor 0.6)",
    }])
}

/// The earlier per-video SQL under pgbench, on a throw-away database with our schema.
async fn same_sql_pgbench() -> anyhow::Result<f64> {
    let pg_db = format!("vib_pgbench_{}", std::process::id());
    baseline::psql(None, &format!("CREATE DATABASE {pg_db}"))?;
    let url = format!("postgres://postgres@127.0.0.1:5432/{pg_db}");
    let migrate = async {
        let out = std::process::Command::new(video_import_tests::bin_path("video-import-api"))
            .arg("migrate")
            .env("VIDEO_IMPORT__DATABASE__URL", &url)
            .output()
            .expect("video-import-api runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg_db.clone()
    };
    let tps = baseline::pgbench(migrate, 16).await;
    let _ = baseline::psql(None, &format!("DROP DATABASE {pg_db} WITH (FORCE)"));
    tps
}

/// How a per-video cost changes over runs of growing work: what the growth targets are about
/// (a small run also pays the fixed start-up latency over fewer videos).
pub(crate) struct Growth {
    /// The cheapest and the dearest run.
    pub low: f64,
    pub high: f64,
    /// The largest factor from one run to the next larger one.
    pub step: f64,
}

impl Growth {
    /// Of `costs`, in the order of growing work.
    pub fn of(costs: &[f64]) -> Self {
        Growth {
            low: costs.iter().copied().fold(f64::MAX, f64::min),
            high: costs.iter().copied().fold(0.0, f64::max),
            step: costs.windows(2).map(|w| w[1] / w[0]).fold(0.0, f64::max),
        }
    }
}

/// Scenario 14, how the cost grows with the work: scenario 1 at 1,000, 10,000 and 100,000 videos, in
/// microseconds of wall time per video (the machine's two cores are the whole budget).
pub async fn growth() -> anyhow::Result<Vec<Row>> {
    let mut runs = Vec::new();
    for total in [1_000usize, 10_000, 100_000] {
        let rate = end_to_end_run(total).await?;
        runs.push((total, rate));
    }
    let costs: Vec<f64> = runs.iter().map(|(_, r)| 1e6 / r).collect();
    let Growth { low, high, step } = Growth::of(&costs);
    let figure = runs
        .iter()
        .zip(&costs)
        .map(|((n, r), c)| format!("{n}: {r:.0} videos/s ({c:.0} µs/video)"))
        .collect::<Vec<_>>()
        .join("; ");
    println!(
        "growth: {figure}; spread {:.0} %, largest step up {step:.2}",
        (high / low - 1.0) * 100.0
    );
    Ok(vec![Row {
        scenario: "14 growth: scenario 1 at 1k, 10k, 100k videos",
        figure,
        baseline: format!("the cheapest run: {low:.0} µs/video"),
        ratio: format!(
            "dearest / cheapest {:.2}; per video at 10 × the work: {step:.2} × at most",
            high / low
        ),
        target: "per-video cost stays within 20 % as the work grows",
    }])
}

/// Scenario 2: batches of 100 from 16 concurrent clients for 15 s.
pub async fn acceptance() -> anyhow::Result<Vec<Row>> {
    let stack = Stack::start(options(0, false, &[])).await;
    let project = stack.project("bench").await;
    let base = "https://archive.example";
    let clients = 16;
    let until = Instant::now() + Duration::from_secs(15);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = stack.http.clone();
        let url = format!("{}/api/v1/import/videos", stack.api_url);
        let token = project.token.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while Instant::now() < until {
                let body = batch(base, (c * 1_000_000) + i * 100, 100, None);
                let t = Instant::now();
                let r = http.post(&url).bearer_auth(&token).json(&body).send().await;
                if matches!(r, Ok(ref r) if r.status() == 200) {
                    latencies.push(t.elapsed());
                }
                i += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let rate = latencies.len() as f64 * 100.0 / elapsed;
    let (p50, p99) = (pct(0.50), pct(0.99));
    println!(
        "{} batches of 100 from {clients} clients in {elapsed:.1} s: {rate:.0} videos/s, p50 {:.1} ms, p99 {:.1} ms",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    stack.finish().await;
    Ok(vec![Row {
        scenario: "2 API acceptance",
        figure: format!(
            "{rate:.0} videos/s, p50 {:.0} ms, p99 {:.0} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        ),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "5000/s, p99 < 250 ms",
    }])
}

/// Peak resident memory (VmHWM) of a process, in MiB.
pub(crate) fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Scenario 3: one 2 GiB video against `curl -o`, and the worker's peak memory.
pub async fn large_file() -> anyhow::Result<Vec<Row>> {
    let size: u64 = 2 * 1024 * 1024 * 1024;
    let stack = Stack::start(options(1, false, &[])).await;
    let project = stack.project("bench").await;
    let source = stack.dir.join("large-source.mp4");
    {
        let mut head = fixture("bench16k.mp4");
        head.resize(64 * 1024, 0);
        std::fs::write(&source, &head)?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&source)?
            .set_len(size)?;
    }
    let base = servers::large_file(source.clone()).await;
    let url = format!("{base}/large.mp4");
    let curl = baseline::curl(&url, &stack.dir.join("curl.out"))?;
    println!("curl -o: {:.0} MiB/s", curl / 1048576.0);
    let pid = stack.pid("worker0").expect("worker running");
    let idle = peak_rss_mib(pid);
    let started = Instant::now();
    let job = post(
        &stack,
        &project,
        &json!({"systemName": "archive", "videos": [{"url": url, "id": "large", "fileName": "f", "metadata": {}}]}),
    )
    .await?;
    let status = stack.wait_finished(&project.token, &job, 1800).await;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        status["state"] == "success",
        "large import failed: {status}"
    );
    let rate = size as f64 / elapsed;
    let peak = peak_rss_mib(pid);
    println!(
        "worker: {:.0} MiB/s ({:.1} s), peak RSS {peak:.1} MiB (idle {idle:.1} MiB)",
        rate / 1048576.0,
        elapsed
    );
    let mut rows = vec![Row {
        scenario: "3 large file (2 GiB)",
        figure: format!("{:.0} MiB/s, peak RSS {peak:.0} MiB", rate / 1048576.0),
        baseline: format!("curl -o {:.0} MiB/s", curl / 1048576.0),
        ratio: format!("{:.2}", rate / curl),
        target: "≥ 0.7 of curl, RSS < 64 MiB",
    }];

    // Reading it back through the API (GET /api/v1/mediaLibrary/{id}/asset) beside curl of
    // the same file from the local web server, alternated so that both see the same cache.
    let media_id = status["videos"][0]["video"]["mediaId"]
        .as_str()
        .context("the imported video's mediaId")?
        .to_string();
    let asset = format!("{}/api/v1/mediaLibrary/{media_id}/asset", stack.api_url);
    let auth = format!("Authorization: Bearer {}", project.token);
    let api_pid = stack.pid("api").expect("api running");
    let api_before = peak_rss_mib(api_pid);
    let out = stack.dir.join("read.out");
    let (mut reads, mut sources) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        sources.push(baseline::curl(&url, &out)?);
        reads.push(baseline::curl_with(&asset, &out, &[&auth])?);
    }
    let api_after = peak_rss_mib(api_pid);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (read, source) = (median(&mut reads), median(&mut sources));
    println!(
        "asset read: {:.0} MiB/s (runs {:?}), curl of the source {:.0} MiB/s, api peak RSS {api_before:.1} → {api_after:.1} MiB",
        read / 1048576.0,
        reads.iter().map(|r| (r / 1048576.0).round()).collect::<Vec<_>>(),
        source / 1048576.0
    );
    rows.push(Row {
        scenario: "3b asset read (2 GiB)",
        figure: format!(
            "{:.0} MiB/s, api RSS +{:.1} MiB",
            read / 1048576.0,
            api_after - api_before
        ),
        baseline: format!("curl of the source {:.0} MiB/s", source / 1048576.0),
        ratio: format!("{:.2}", read / source),
        target: "≥ 1.0 of curl, RSS growth < 32 MiB",
    });
    stack.finish().await;
    Ok(rows)
}

/// Scenario 4: every video answered after 200 ms; throughput against concurrency / 0.2 s.
pub async fn latency_bound() -> anyhow::Result<Vec<Row>> {
    let concurrency = 32;
    let base = servers::videos(
        Bytes::from(fixture("bench16k.mp4")),
        Duration::from_millis(200),
    )
    .await;
    let mut rows = Vec::new();
    for workers in [1usize, 2] {
        // About ten seconds of work at the bound, so start-up costs weigh little.
        let total = 1600 * workers;
        let (rate, _) = latency_run(&base, workers, concurrency, total, &[]).await?;
        let bound = (workers * concurrency) as f64 / 0.2;
        println!(
            "{workers} worker(s) × {concurrency} downloads: {rate:.0} videos/s, bound {bound:.0}/s"
        );
        rows.push(Row {
            scenario: if workers == 1 {
                "4 latency-bound, 1 worker"
            } else {
                "4 latency-bound, 2 workers"
            },
            figure: format!("{rate:.0} videos/s"),
            baseline: format!("bound {bound:.0}/s"),
            ratio: format!("{:.2}", rate / bound),
            target: "≥ 0.8 of the bound, growing with workers",
        });
    }
    Ok(rows)
}

/// Imports `total` videos from `base` (batches of 400) with `workers` workers of
/// `concurrency` slots, and `extra` settings; returns the rate and the videos imported.
async fn latency_run(
    base: &str,
    workers: usize,
    concurrency: usize,
    total: usize,
    extra: &[(&str, &str)],
) -> anyhow::Result<(f64, i64)> {
    let slots = concurrency.to_string();
    let mut env = vec![
        ("VIDEO_IMPORT__FETCH__CONCURRENCY", slots.as_str()),
        // Every video comes from the one bench server: let the per-host bound (scenario 9's
        // subject) not be the limit here.
        ("VIDEO_IMPORT__FETCH__PER_HOST_CONCURRENCY", slots.as_str()),
    ];
    env.extend_from_slice(extra);
    let stack = Stack::start(options(workers, false, &env)).await;
    let project = stack.project("bench").await;
    let started = Instant::now();
    let mut jobs = Vec::new();
    for b in 0..total / 400 {
        jobs.push(post(&stack, &project, &batch(base, b * 400, 400, None)).await?);
    }
    let mut imported = 0;
    for job in &jobs {
        let status = stack.wait_finished(&project.token, job, 900).await;
        imported += status["overview"]["imported"].as_i64().unwrap_or(0);
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    stack.finish().await;
    Ok((rate, imported))
}

/// Scenario 4b: the latency-bound import of scenario 4 (1 worker), where every video's first
/// try fails and its second comes back through a delay queue, one video to a message: the
/// worker must fill its slots with those small messages as it does with full ones.
pub async fn retried() -> anyhow::Result<Vec<Row>> {
    let concurrency = 32;
    let base = servers::videos_failing_once(
        Bytes::from(fixture("bench16k.mp4")),
        Duration::from_millis(200),
    )
    .await;
    let total = 1600;
    // No in-process retry: the second try goes through the delay queue, after 1 s.
    let retries = [
        ("VIDEO_IMPORT__FETCH__QUICK_RETRIES", "0"),
        ("VIDEO_IMPORT__FETCH__RETRY_DELAYS_SECS", "1"),
    ];
    let (rate, imported) = latency_run(&base, 1, concurrency, total, &retries).await?;
    anyhow::ensure!(
        imported == total as i64,
        "{imported} of {total} videos imported"
    );
    // Two tries of 200 ms per video, 32 at once.
    let bound = concurrency as f64 / 0.4;
    println!("1 worker × {concurrency} downloads, every video tried twice: {rate:.0} videos/s, bound {bound:.0}/s");
    Ok(vec![Row {
        scenario: "4b latency-bound, every video retried once through the delay queue",
        figure: format!("{rate:.0} videos/s"),
        baseline: format!("bound {bound:.0}/s (two tries of 200 ms, 32 at once)"),
        ratio: format!("{:.2}", rate / bound),
        target: "≥ 0.8 of the bound",
    }])
}

/// Creates `n` finished jobs whose webhook goes to `url`, with their outbox messages.
async fn finished_jobs(stack: &Stack, project: &str, tag: &str, n: usize, url: &str) {
    stack
        .sql(&format!(
            "WITH p AS (SELECT id FROM projects WHERE handle = '{project}')
             INSERT INTO jobs (id, project_id, system_name, webhook, context, state, total, pending,
                               imported, finished_at)
             SELECT '{tag}' || g, p.id, 'archive', '{url}', '{{\"n\": 1}}', 'success', 1, 0, 1, now()
             FROM p, generate_series(1, {n}) g"
        ))
        .await;
    stack
        .sql(&format!(
            "INSERT INTO webhook_deliveries (job_id, webhook_id, url)
             SELECT '{tag}' || g, 'msg_{tag}' || g, '{url}' FROM generate_series(1, {n}) g"
        ))
        .await;
    stack
        .sql(&format!(
            "INSERT INTO outbox (routing_key, payload)
             SELECT 'webhook', json_build_object('job_id', '{tag}' || g, 'attempt', 1, 'url', '{url}')
             FROM generate_series(1, {n}) g"
        ))
        .await;
}

/// Scenario 5: 5,000 finished jobs' webhooks to a fast receiver, alone and beside
/// deliveries to a receiver that never answers (500 and 5,000), one that answers 503 at once,
/// and one that answers after 14 s (just under the 15 s timeout).
pub async fn webhooks() -> anyhow::Result<Vec<Row>> {
    let total = 5000u64;
    let others = [
        (None, 0, ""),
        (
            Some(Answer::Never),
            500,
            "500 to a receiver that never answers",
        ),
        (
            Some(Answer::Never),
            5000,
            "5,000 to a receiver that never answers",
        ),
        (
            Some(Answer::Unavailable),
            500,
            "500 to a receiver that answers 503",
        ),
        (
            Some(Answer::After(Duration::from_secs(14))),
            500,
            "500 to a receiver that answers after 14 s",
        ),
        // The fast receiver alone again: the baseline is the mean of the first and last
        // runs, so that a warming or cooling machine does not pass for isolation.
        (None, 0, ""),
    ];
    let mut rates = Vec::new();
    for (answer, n, label) in others {
        let stack = Stack::start(options(0, true, &[])).await;
        let project = stack.project("bench").await;
        let healthy = Counter::start(false).await;
        let mut other = None;
        if let Some(answer) = answer {
            let receiver = Counter::answering(answer).await;
            finished_jobs(&stack, &project.handle, "other", n, &receiver.url).await;
            other = Some(receiver);
        }
        let started = Instant::now();
        finished_jobs(&stack, &project.handle, "ok", total as usize, &healthy.url).await;
        let last = healthy.wait_for(total, Duration::from_secs(600)).await?;
        let rate = total as f64 / (last - started).as_secs_f64();
        println!(
            "{total} webhooks{}: {rate:.0} deliveries/s",
            if label.is_empty() {
                String::new()
            } else {
                format!(" beside {label}")
            }
        );
        drop(other);
        rates.push((label, rate));
        stack.finish().await;
    }
    let last = rates.len() - 1;
    let alone = (rates[0].1 + rates[last].1) / 2.0;
    println!(
        "the fast receiver alone: {:.0} and {:.0} deliveries/s, mean {alone:.0}",
        rates[0].1, rates[last].1
    );
    let beside: Vec<String> = rates[1..last]
        .iter()
        .map(|(label, rate)| format!("{rate:.0}/s beside {label}"))
        .collect();
    let costs: Vec<String> = rates[1..last]
        .iter()
        .map(|(_, rate)| format!("{:.0} %", (1.0 - rate / alone) * 100.0))
        .collect();
    Ok(vec![Row {
        scenario: "5 webhooks: 5,000 finished jobs to a fast receiver",
        figure: format!("{alone:.0}/s alone; {}", beside.join("; ")),
        baseline: format!(
            "the fast receiver alone, first and last run: {:.0}/s, {:.0}/s",
            rates[0].1, rates[last].1
        ),
        ratio: format!("costs: {}", costs.join(", ")),
        target: "3000/s; each < 10 % slower",
    }])
}

/// Scenario 6: the archive importer submits a 100,000-row CSV (batches of 1,000, 4 in
/// flight), against the API's own accept rate for the same batches from 4 clients, and the
/// importer's peak memory.
pub async fn importer() -> anyhow::Result<Vec<Row>> {
    let rows = 100_000;
    let stack = Stack::start(options(0, false, &[])).await;
    let project = stack.project("bench").await;
    let base = "https://archive.example";

    // The API's own rate: the same 100 batches of 1,000, 4 at a time.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..4 {
        let http = stack.http.clone();
        let url = format!("{}/api/v1/import/videos", stack.api_url);
        let token = project.token.clone();
        tasks.push(tokio::spawn(async move {
            for b in (c..rows / 1000).step_by(4) {
                let body = batch(base, 1_000_000 + b * 1000, 1000, None);
                let r = http.post(&url).bearer_auth(&token).json(&body).send().await;
                anyhow::ensure!(
                    matches!(r, Ok(ref r) if r.status() == 200),
                    "a batch was refused"
                );
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let api_rate = rows as f64 / started.elapsed().as_secs_f64();

    let manifest = stack.dir.join("archive.csv");
    let mut csv = String::from("url,id,fileName,metadata.title\n");
    for i in 0..rows {
        csv.push_str(&format!("{base}/m/{i}.mp4,m{i},f{i},Title {i}\n"));
    }
    std::fs::write(&manifest, csv)?;
    let started = Instant::now();
    let mut child = stack
        .command("video-import")
        .arg("import")
        .arg(&manifest)
        .args(["--api", &stack.api_url, "--token", &project.token])
        .args(["--system-name", "archive", "--in-flight", "4"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let mut peak: f64 = 0.0;
    let status = loop {
        peak = peak.max(peak_rss_mib(pid));
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    anyhow::ensure!(status.success(), "the importer failed: {status}");
    let cli_rate = rows as f64 / started.elapsed().as_secs_f64();
    println!(
        "API alone {api_rate:.0} videos/s; importer {cli_rate:.0} videos/s ({:.2}), peak RSS {peak:.1} MiB",
        cli_rate / api_rate
    );
    stack.finish().await;
    Ok(vec![Row {
        scenario: "6 archive importer (100,000 rows)",
        figure: format!("{cli_rate:.0} videos/s, peak RSS {peak:.0} MiB"),
        baseline: format!("API alone {api_rate:.0} videos/s"),
        ratio: format!("{:.2}", cli_rate / api_rate),
        target: "≥ 0.8 of the API, < 50 MiB",
    }])
}
