//! Scenario "retention" (#25): finished videos of jobs older than the retention cutoff
//! (2,000,000 by default, `--retention-items`), loaded with SQL as 1,000-video jobs with
//! their webhook delivery, attempt and idempotency key. The same import as scenario 1 (1 api,
//! 2 workers, 1 notifier, batches of 1,000, first POST to last webhook) runs three times in
//! one stack: without pruning, while the workers' pruner removes the old rows, and without
//! pruning again; the middle run's rate is compared with the mean of the other two (so a
//! machine that warms or cools does not pass for the pruner's cost). Printed beside it: the
//! prune rate, the pruner's batch times, and the table and index sizes before, after
//! pruning, after a VACUUM and after the last import (whether the freed space is reused).
//! Then a probe of the alternative, a `job_items` partitioned by day: the cost of copying
//! the rows into it, of a point lookup by (job, video) in it, and of dropping a day.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use video_import_tests::videos::fixture;
use video_import_tests::{free_port, Project, Stack};

use crate::scenarios::{batch, options, post};
use crate::servers::{self, Counter};
use crate::Row;

/// Videos per old job, as a batch of the API's default size.
const PER_JOB: u64 = 1_000;
/// Old jobs loaded per statement.
const LOAD_JOBS: u64 = 100;
/// The tables retention prunes, and `jobs` (tombstones).
const TABLES: [&str; 5] = [
    "job_items",
    "webhook_attempts",
    "webhook_deliveries",
    "idempotency_keys",
    "jobs",
];
/// Point lookups per table in the partitioning probe.
const LOOKUPS: usize = 20_000;
/// Days in the partitioning probe (a month of retention, a partition a day).
const DAYS: u64 = 30;

/// Scenario 10.
pub async fn retention(items: u64, videos: usize) -> anyhow::Result<Vec<Row>> {
    anyhow::ensure!(
        items >= PER_JOB && videos >= 1000,
        "--retention-items must be at least {PER_JOB} and --retention-videos at least 1000"
    );
    let jobs = items / PER_JOB;
    let items = jobs * PER_JOB;
    let mut stack = Stack::start(options(
        0,
        true,
        &[("VIDEO_IMPORT__FETCH__CONCURRENCY", "64")],
    ))
    .await;
    let project = stack.project("bench").await;
    let base = servers::videos(Bytes::from(fixture("bench16k.mp4")), Duration::ZERO).await;
    let db = connect(&stack.db_url).await?;
    db.batch_execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        .await
        .context("pgstattuple (postgresql-contrib) for the free space figures")?;

    let loading = Instant::now();
    load(&db, &project, jobs).await?;
    db.batch_execute("VACUUM ANALYZE").await?;
    db.batch_execute("CHECKPOINT").await?;
    println!(
        "loaded {items} finished videos in {jobs} jobs finished 40 days ago in {:.0} s",
        loading.elapsed().as_secs_f64()
    );
    let mut sizes = vec![("before pruning", measure_sizes(&db).await?)];

    // A warm-up import, not measured: the first import after the load is slower (cold
    // workers and caches) and would flatter the pruning run.
    import_run(&mut stack, &project, &base, 3, 2000, false).await?;
    db.batch_execute("CHECKPOINT").await?;
    let first = import_run(&mut stack, &project, &base, 0, videos, false).await?;
    db.batch_execute("CHECKPOINT").await?;
    let pruned = import_run(&mut stack, &project, &base, 1, videos, true).await?;
    let prune = pruned.prune.as_ref().context("the pruning run's figures")?;
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM jobs WHERE id LIKE 'old%' AND pruned_at IS NULL",
            &[],
        )
        .await?
        .get(0);
    anyhow::ensure!(left == 0, "{left} old jobs were not pruned");
    sizes.push(("after pruning", measure_sizes(&db).await?));
    // Autovacuum, tuned per table by migration 17, should come by itself within a naptime
    // or two (one minute each by default).
    let autovacuum_on: String = db.query_one("SHOW autovacuum", &[]).await?.get(0);
    let waited = Instant::now();
    let autovacuum = loop {
        if autovacuum_on != "on" {
            println!("autovacuum is off on this PostgreSQL: the VACUUM below stands in for it");
            break None;
        }
        let runs: i64 = db
            .query_one(
                "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'job_items'",
                &[],
            )
            .await?
            .get(0);
        if runs > 0 {
            break Some(waited.elapsed());
        }
        if waited.elapsed() > Duration::from_secs(180) {
            break None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    match autovacuum {
        Some(after) => {
            println!(
                "autovacuum vacuumed job_items {:.0} s after the pruning ended",
                after.as_secs_f64()
            );
            sizes.push(("after autovacuum", measure_sizes(&db).await?));
        }
        None if autovacuum_on == "on" => {
            println!("autovacuum did not vacuum job_items within 180 s of the pruning")
        }
        None => {}
    }
    let vacuum = Instant::now();
    db.batch_execute("VACUUM ANALYZE").await?;
    let vacuum = vacuum.elapsed();
    sizes.push(("after VACUUM", measure_sizes(&db).await?));
    db.batch_execute("CHECKPOINT").await?;
    let last = import_run(&mut stack, &project, &base, 2, videos, false).await?;
    sizes.push(("after the third import", measure_sizes(&db).await?));

    let baseline = (first.rate + last.rate) / 2.0;
    let ratio = pruned.rate / baseline;
    println!(
        "import without pruning {:.0} and {:.0} videos/s (mean {baseline:.0}); while pruning {:.0} videos/s: {ratio:.2}",
        first.rate, last.rate, pruned.rate
    );
    println!(
        "pruned {items} videos' rows of {jobs} jobs in {:.1} s: {:.0} videos/s ({:.0} rows/s over every table); \
         the import overlapped the pruning for {:.0} % of its time",
        prune.seconds,
        items as f64 / prune.seconds,
        prune.rows as f64 / prune.seconds,
        prune.overlap * 100.0
    );
    println!(
        "pruner batches: {} transactions, mean {:.1} ms, {:.1} % within 100 ms, the longest under {}",
        prune.batches,
        prune.mean_batch * 1e3,
        prune.within_100ms * 100.0,
        prune.longest_bound
    );
    println!(
        "VACUUM ANALYZE after pruning took {:.1} s",
        vacuum.as_secs_f64()
    );
    let per_row = sizes[0].1[0].total as f64 / items as f64;
    println!("job_items with its indexes before pruning: {per_row:.0} bytes per video");
    print_sizes(&sizes);
    let probe = partition_probe(&db, items).await?;
    stack.finish().await;

    let mib = |b: i64| b as f64 / 1048576.0;
    let table = |label: &str| {
        sizes
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, s)| s.iter().map(|t| t.total).sum::<i64>())
            .unwrap_or(0)
    };
    Ok(vec![
        Row {
            scenario: "10 retention: an import while the pruner removes old finished videos",
            figure: format!(
                "{:.0} videos/s while {items} old videos were pruned at {:.0} videos/s (batches: mean {:.1} ms, {:.0} % ≤ 100 ms)",
                pruned.rate,
                items as f64 / prune.seconds,
                prune.mean_batch * 1e3,
                prune.within_100ms * 100.0
            ),
            baseline: format!(
                "the same import without pruning, before and after: {:.0}, {:.0} videos/s",
                first.rate, last.rate
            ),
            ratio: format!("{ratio:.2} (overlap {:.0} %)", prune.overlap * 100.0),
            target: "≥ 0.90 of the import without pruning",
        },
        Row {
            scenario: "10b retention: size of the pruned tables with their indexes",
            figure: format!(
                "{:.1} MiB after pruning, {:.1} MiB after VACUUM, {:.1} MiB after {videos} more videos",
                mib(table("after pruning")),
                mib(table("after VACUUM")),
                mib(table("after the third import"))
            ),
            baseline: format!(
                "{:.1} MiB before pruning, {:.1} MiB after VACUUM",
                mib(table("before pruning")),
                mib(table("after VACUUM"))
            ),
            ratio: format!(
                "{:.2} of after VACUUM after the next import",
                table("after the third import") as f64 / table("after VACUUM").max(1) as f64
            ),
            target: "no growth once vacuumed (space reused)",
        },
        Row {
            scenario: "10c the alternative: job_items partitioned by day (30 partitions)",
            figure: format!(
                "copy {:.0} rows/s; lookup by (job, video) {:.1} µs in PostgreSQL, {:.0} µs through a prepared statement; drop a day {:.0} ms",
                probe.parted_copy_rate,
                probe.parted_lookup_us,
                probe.parted_asked_us,
                probe.drop_ms
            ),
            baseline: format!(
                "one table: copy {:.0} rows/s; lookup {:.1} µs, {:.0} µs",
                probe.plain_copy_rate, probe.plain_lookup_us, probe.plain_asked_us
            ),
            ratio: format!(
                "lookup {:.1} ×, {:.1} ×",
                probe.parted_lookup_us / probe.plain_lookup_us,
                probe.parted_asked_us / probe.plain_asked_us
            ),
            target: "(informs the choice)",
        },
    ])
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to the bench database")?;
    tokio::spawn(conn);
    Ok(client)
}

/// `jobs` finished jobs of [`PER_JOB`] imported videos each, finished 40 days ago, each with
/// a delivered webhook, one attempt and an idempotency key, as the service leaves them.
async fn load(db: &tokio_postgres::Client, project: &Project, jobs: u64) -> anyhow::Result<()> {
    let project_id: i64 = db
        .query_one(
            "SELECT id FROM projects WHERE handle = $1",
            &[&project.handle],
        )
        .await?
        .get(0);
    let mut from = 1;
    while from <= jobs {
        let to = (from + LOAD_JOBS - 1).min(jobs);
        db.batch_execute(&format!(
            "WITH j AS (
                 INSERT INTO jobs (id, project_id, system_name, webhook, context, state, total,
                                   pending, imported, started_at, finished_at)
                 SELECT 'old' || g, {project_id}, 'archive', 'http://127.0.0.1:9/hook',
                        '{{\"migration\": \"tape-42\"}}', 'success', {PER_JOB}, 0, {PER_JOB},
                        now() - interval '40 days' - g * interval '1 minute',
                        now() - interval '40 days' - g * interval '1 minute' + interval '30 s'
                 FROM generate_series({from}, {to}) g
                 RETURNING id, finished_at),
             d AS (
                 INSERT INTO webhook_deliveries (job_id, webhook_id, url, state, attempts,
                                                 delivered_at, created_at)
                 SELECT id, 'msg_' || id, 'http://127.0.0.1:9/hook', 'delivered', 1,
                        finished_at, finished_at FROM j),
             a AS (
                 INSERT INTO webhook_attempts (job_id, attempted_at, http_status, duration_ms,
                                               round, number)
                 SELECT id, finished_at, 204, 12, 1, 1 FROM j),
             k AS (
                 INSERT INTO idempotency_keys (project_id, key, request_hash, job_id, created_at)
                 SELECT {project_id}, 'batch-' || id, md5(id), id, finished_at FROM j)
             INSERT INTO job_items (job_id, idx, external_id, url, file_name, metadata, state,
                                    media_id, attempts, updated_at)
             SELECT j.id, i, j.id || '-' || i,
                    'https://archive.example/videos/' || j.id || '/' || i || '.mp4',
                    'video-' || i || '.mp4',
                    '{{\"title\": \"An archived video\", \"source\": \"tape\"}}',
                    'imported', 'm' || j.id || 'x' || i, 1, j.finished_at
             FROM j, generate_series(0, {PER_JOB} - 1) i"
        ))
        .await
        .with_context(|| format!("loading old jobs {from}..{to}"))?;
        from = to + 1;
    }
    Ok(())
}

/// What the pruner did during a run.
struct PruneFigures {
    /// From its first batch to its last.
    seconds: f64,
    /// Rows removed over every table (tombstones left out).
    rows: u64,
    /// The share of the import's time during which the pruner was at work.
    overlap: f64,
    batches: u64,
    mean_batch: f64,
    within_100ms: f64,
    /// The smallest histogram bound above the longest batch.
    longest_bound: String,
}

/// One import run.
struct ImportRun {
    rate: f64,
    prune: Option<PruneFigures>,
}

/// `videos` new videos in batches of 1,000 by two fresh workers (pruning when `prune`),
/// first POST to last webhook. Runs 0 to 2 are measured, 3 is the warm-up.
async fn import_run(
    stack: &mut Stack,
    project: &Project,
    base: &str,
    run: usize,
    videos: usize,
    prune: bool,
) -> anyhow::Result<ImportRun> {
    let mut workers = Vec::new();
    for w in 0..2 {
        let port = free_port();
        let name = format!("run{run}-worker{w}");
        let listen = format!("127.0.0.1:{port}");
        let retention = if prune { "2592000" } else { "0" };
        stack
            .spawn(
                &name,
                "video-import-worker",
                &[],
                &[
                    ("VIDEO_IMPORT__METRICS__LISTEN", &listen),
                    ("VIDEO_IMPORT__RETENTION__FINISHED_JOBS_SECS", retention),
                    ("VIDEO_IMPORT__RETENTION__INTERVAL_SECS", "1"),
                ],
            )
            .await;
        let ready = format!("http://{listen}/readyz");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(stack.http.get(&ready).send().await, Ok(r) if r.status().is_success()) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{name} did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        workers.push((name, listen));
    }
    // Every run waits the pruner's first interval, so that in the pruning run it is at work
    // from the first POST.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let monitor = prune.then(|| {
        let addresses: Vec<String> = workers.iter().map(|(_, a)| a.clone()).collect();
        let http = stack.http.clone();
        let db_url = stack.db_url.clone();
        tokio::spawn(async move { watch_pruning(http, db_url, addresses).await })
    });
    let receiver = Counter::start(false).await;
    let started = Instant::now();
    let batches = videos / 1000;
    let mut ids = Vec::new();
    for b in 0..batches {
        let from = 1_000_000 * (run + 1) + b * 1000;
        ids.push(
            post(
                stack,
                project,
                &batch(base, from, 1000, Some(&receiver.url)),
            )
            .await?,
        );
    }
    let last = receiver
        .wait_for(batches as u64, Duration::from_secs(1800))
        .await?;
    let elapsed = last - started;
    let done: i64 = stack
        .sql(&format!(
            "SELECT coalesce(sum(imported), 0)::int8 FROM jobs WHERE id IN ('{}')",
            ids.join("','")
        ))
        .await[0]
        .get(0);
    anyhow::ensure!(
        done == (batches * 1000) as i64,
        "{done} of {videos} imported"
    );
    let rate = (batches * 1000) as f64 / elapsed.as_secs_f64();
    println!(
        "{}: {} videos in {:.1} s: {rate:.0} videos/s{}",
        if run < 3 {
            format!("run {}", run + 1)
        } else {
            "warm-up".to_string()
        },
        batches * 1000,
        elapsed.as_secs_f64(),
        if prune { " (pruning)" } else { "" }
    );
    let prune = match monitor {
        Some(task) => {
            let watched = task.await??;
            let import = (started, last);
            let overlap = overlap(import, (watched.first, watched.last));
            Some(PruneFigures {
                seconds: (watched.last - watched.first).as_secs_f64(),
                rows: watched.rows,
                overlap,
                batches: watched.batches,
                mean_batch: watched.mean_batch,
                within_100ms: watched.within_100ms,
                longest_bound: watched.longest_bound,
            })
        }
        None => None,
    };
    for (name, _) in workers {
        stack.terminate(&name).await;
    }
    Ok(ImportRun { rate, prune })
}

/// The share of `import` during which `prune` ran.
fn overlap(import: (Instant, Instant), prune: (Instant, Instant)) -> f64 {
    let from = import.0.max(prune.0);
    let to = import.1.min(prune.1);
    let length = import.1.saturating_duration_since(import.0).as_secs_f64();
    if to <= from || length == 0.0 {
        return 0.0;
    }
    (to - from).as_secs_f64() / length
}

/// The pruning as the workers' metrics showed it.
struct Watched {
    first: Instant,
    last: Instant,
    rows: u64,
    batches: u64,
    mean_batch: f64,
    within_100ms: f64,
    longest_bound: String,
}

/// Scrapes the workers every 100 ms until the pruning is done (no old job and no old key
/// left), noting when the first and the last rows went.
async fn watch_pruning(
    http: reqwest::Client,
    db_url: String,
    workers: Vec<String>,
) -> anyhow::Result<Watched> {
    let db = connect(&db_url).await?;
    let mut first = None;
    let mut last = Instant::now();
    let mut seen = 0.0;
    let mut looked = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(7200);
    loop {
        let mut texts = Vec::new();
        for address in &workers {
            texts.push(
                http.get(format!("http://{address}/metrics"))
                    .send()
                    .await?
                    .text()
                    .await?,
            );
        }
        let sum = |name: &str| -> f64 {
            texts
                .iter()
                .flat_map(|t| t.lines())
                .filter_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .sum()
        };
        let rows: f64 = [
            "job_items",
            "webhook_attempts",
            "webhook_deliveries",
            "dispatch",
            "idempotency_keys",
        ]
        .iter()
        .map(|t| {
            sum(&format!(
                "video_import_retention_rows_pruned_total{{table=\"{t}\"}}"
            ))
        })
        .sum();
        let now = Instant::now();
        if rows > seen {
            seen = rows;
            first.get_or_insert(now);
            last = now;
        }
        // The database says when it is over: no old job and no old key left.
        let mut done = false;
        if first.is_some() && now - looked > Duration::from_millis(500) {
            looked = now;
            let left: i64 = db
                .query_one(
                    "SELECT (SELECT count(*) FROM jobs WHERE id LIKE 'old%' AND pruned_at IS NULL)
                          + (SELECT count(*) FROM idempotency_keys WHERE job_id LIKE 'old%')",
                    &[],
                )
                .await?
                .get(0);
            done = left == 0;
        }
        if done {
            let count = sum("video_import_retention_batch_duration_seconds_count");
            let total = sum("video_import_retention_batch_duration_seconds_sum");
            let bounds = [
                "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf",
            ];
            let within = |le: &str| {
                sum(&format!(
                    "video_import_retention_batch_duration_seconds_bucket{{le=\"{le}\"}}"
                ))
            };
            let longest_bound = bounds
                .iter()
                .find(|le| within(le) >= count)
                .map(|le| format!("{le} s"))
                .unwrap_or_else(|| "?".into());
            return Ok(Watched {
                first: first.unwrap_or(last),
                last,
                rows: seen as u64,
                batches: count as u64,
                mean_batch: total / count.max(1.0),
                within_100ms: within("0.1") / count.max(1.0),
                longest_bound,
            });
        }
        anyhow::ensure!(now < deadline, "the pruning did not end within two hours");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One table's figures at one moment.
struct Size {
    table: &'static str,
    heap: i64,
    indexes: i64,
    total: i64,
    /// Counted.
    live: i64,
    /// PostgreSQL's statistics (an estimate).
    dead: i64,
    /// Free space in the heap, in percent (pgstattuple).
    free: f64,
    autovacuums: i64,
}

async fn measure_sizes(db: &tokio_postgres::Client) -> anyhow::Result<Vec<Size>> {
    let mut out = Vec::new();
    for table in TABLES {
        let row = db
            .query_one(
                &format!(
                "SELECT pg_relation_size(c.oid), pg_indexes_size(c.oid), pg_total_relation_size(c.oid),
                        (SELECT count(*) FROM {table}), s.n_dead_tup, s.autovacuum_count,
                        (SELECT free_percent FROM pgstattuple(c.oid))
                 FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
                 WHERE c.relname = $1"),
                &[&table],
            )
            .await
            .with_context(|| format!("measuring {table}"))?;
        out.push(Size {
            table,
            heap: row.get(0),
            indexes: row.get(1),
            total: row.get(2),
            live: row.get(3),
            dead: row.get(4),
            autovacuums: row.get(5),
            free: row.get(6),
        });
    }
    Ok(out)
}

fn print_sizes(sizes: &[(&str, Vec<Size>)]) {
    println!("| moment | table | heap MiB | indexes MiB | total MiB | live rows | dead rows | free % | autovacuums |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mib = |b: i64| b as f64 / 1048576.0;
    for (moment, tables) in sizes {
        for t in tables {
            println!(
                "| {moment} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {:.0} | {} |",
                t.table,
                mib(t.heap),
                mib(t.indexes),
                mib(t.total),
                t.live,
                t.dead,
                t.free,
                t.autovacuums
            );
        }
    }
}

/// What the partitioning probe measured.
struct Probe {
    plain_copy_rate: f64,
    parted_copy_rate: f64,
    plain_lookup_us: f64,
    parted_lookup_us: f64,
    plain_asked_us: f64,
    parted_asked_us: f64,
    drop_ms: f64,
}

/// The alternative to batched deletes: `job_items` partitioned by day, whose oldest day is
/// dropped. Copies `items` rows (spread over [`DAYS`] days) into a table like `job_items`
/// and into a partitioned one (what converting an existing table costs, per row), times
/// point lookups by (job, video) in both (what the worker does for every video: its key
/// holds no time, so every partition's index is searched), and times dropping a day.
async fn partition_probe(db: &tokio_postgres::Client, items: u64) -> anyhow::Result<Probe> {
    let per_day = (items / DAYS).max(1);
    let mut partitions = String::new();
    for d in 0..DAYS {
        partitions.push_str(&format!(
            "CREATE TABLE probe_parted_{d} PARTITION OF probe_parted
                 FOR VALUES FROM ('2026-01-01'::timestamptz + interval '{d} days')
                 TO ('2026-01-01'::timestamptz + interval '{} days');",
            d + 1
        ));
    }
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS probe_plain, probe_parted;
         CREATE TABLE probe_plain (LIKE job_items INCLUDING DEFAULTS);
         ALTER TABLE probe_plain ADD PRIMARY KEY (job_id, idx);
         CREATE TABLE probe_parted (LIKE job_items INCLUDING DEFAULTS)
             PARTITION BY RANGE (updated_at);
         ALTER TABLE probe_parted ADD PRIMARY KEY (job_id, idx, updated_at);
         {partitions}"
    ))
    .await
    .context("creating the probe tables")?;
    let fill = |table: &str| {
        format!(
            "INSERT INTO {table} (job_id, idx, external_id, url, file_name, metadata, state,
                                  media_id, attempts, updated_at)
             SELECT 'p' || (g / {PER_JOB}), g % {PER_JOB}, 'p-' || g,
                    'https://archive.example/videos/p/' || g || '.mp4', 'video.mp4',
                    '{{\"title\": \"An archived video\", \"source\": \"tape\"}}', 'imported',
                    'm' || g, 1,
                    '2026-01-01'::timestamptz + (g / {per_day}) * interval '1 day' + interval '1 hour'
             FROM generate_series(0, {} - 1) g",
            per_day * DAYS
        )
    };
    let copy = async |table: &str| -> anyhow::Result<f64> {
        let started = Instant::now();
        db.batch_execute(&fill(table)).await?;
        Ok((per_day * DAYS) as f64 / started.elapsed().as_secs_f64())
    };
    let plain_copy_rate = copy("probe_plain").await?;
    let parted_copy_rate = copy("probe_parted").await?;
    db.batch_execute("VACUUM ANALYZE probe_plain").await?;
    db.batch_execute("VACUUM ANALYZE probe_parted").await?;
    // Point lookups inside PostgreSQL (no round trips to blur them), each a parameterised
    // index scan as the worker's statements are: one index in the plain table, one per day
    // in the partitioned one (its key holds no time to prune partitions with).
    let jobs = (per_day * DAYS / PER_JOB).max(1);
    let lookup = async |table: &str| -> anyhow::Result<f64> {
        let started = Instant::now();
        db.query_one(
            &format!(
                "SELECT count(x.state) FROM generate_series(1, {LOOKUPS}) n,
                     LATERAL (SELECT state FROM {table}
                              WHERE job_id = 'p' || ((n * 7919) % {jobs})
                                AND idx = ((n * 104729) % {PER_JOB})::int) x"
            ),
            &[],
        )
        .await?;
        Ok(started.elapsed().as_secs_f64() * 1e6 / LOOKUPS as f64)
    };
    // The same through a prepared statement, one round trip each, as the worker asks: a
    // partitioned table's plan also locks and sets up every partition on each execution.
    let asked = async |table: &str| -> anyhow::Result<f64> {
        let statement = db
            .prepare(&format!(
                "SELECT state FROM {table} WHERE job_id = $1 AND idx = $2"
            ))
            .await?;
        let n = LOOKUPS as u64 / 10;
        let started = Instant::now();
        for i in 0..n {
            let job = format!("p{}", (i * 7919) % jobs);
            let idx = ((i * 104_729) % PER_JOB) as i32;
            db.query_opt(&statement, &[&job, &idx]).await?;
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64)
    };
    // Alternated, once to warm caches and plans, then three times each: the medians count.
    lookup("probe_plain").await?;
    lookup("probe_parted").await?;
    asked("probe_plain").await?;
    asked("probe_parted").await?;
    let (mut plain, mut parted, mut plain_asked, mut parted_asked) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        plain.push(lookup("probe_plain").await?);
        parted.push(lookup("probe_parted").await?);
        plain_asked.push(asked("probe_plain").await?);
        parted_asked.push(asked("probe_parted").await?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let plain_lookup_us = median(&mut plain);
    let parted_lookup_us = median(&mut parted);
    let plain_asked_us = median(&mut plain_asked);
    let parted_asked_us = median(&mut parted_asked);
    let started = Instant::now();
    db.batch_execute(
        "ALTER TABLE probe_parted DETACH PARTITION probe_parted_0; DROP TABLE probe_parted_0",
    )
    .await?;
    let drop_ms = started.elapsed().as_secs_f64() * 1e3;
    db.batch_execute("DROP TABLE probe_plain, probe_parted")
        .await?;
    println!(
        "partitioning probe, {} rows over {DAYS} days: copy {plain_copy_rate:.0} rows/s into one table, \
         {parted_copy_rate:.0} rows/s into the partitioned one; lookup by (job, video) inside \
         PostgreSQL {plain_lookup_us:.1} µs against {parted_lookup_us:.1} µs, through a prepared \
         statement {plain_asked_us:.0} µs against {parted_asked_us:.0} µs; dropping a day {drop_ms:.0} ms",
        per_day * DAYS
    );
    Ok(Probe {
        plain_copy_rate,
        parted_copy_rate,
        plain_lookup_us,
        parted_lookup_us,
        plain_asked_us,
        parted_asked_us,
        drop_ms,
    })
}
