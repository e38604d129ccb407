//! Raw baselines measured in the same run: pgbench running the worker's per-video SQL, a
//! bare lapin publish/consume loop, and curl downloading the same large file.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// The machine's memory, from /proc/meminfo.
pub fn memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB RAM", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default()
}

/// What the worker ran for one video before group commit was set-based (load, lock, entry,
/// item, job counter), each video in its own transaction: the "same SQL" baseline kept
/// beside the minimal one so that earlier results stay comparable.
const WORKER_SQL: &str = r#"
\set n random(1, 100000)
\set job random(0, 9)
SELECT i.external_id, i.url, i.file_name, i.metadata, i.state = 'pending', m.original_url = i.url, m.source_etag, m.source_last_modified FROM job_items i LEFT JOIN media_entries m ON m.project_id = 1 AND m.system_name = 'archive' AND m.external_id = i.external_id WHERE i.job_id = 'bench' AND i.idx = :n;
BEGIN;
SELECT 1 FROM job_items WHERE job_id = 'bench' AND idx = :n FOR UPDATE;
SELECT id, sha256, metadata, file_name, asset_key FROM media_entries WHERE project_id = 1 AND system_name = 'archive' AND external_id = 'e' || :n || '-' || :client_id FOR UPDATE;
INSERT INTO media_entries (id, project_id, system_name, external_id, file_name, metadata, asset_key, asset_size, mime_type, sha256, original_url, source_etag, source_last_modified, duration_seconds, width, height, video_codec) VALUES (md5(random()::text), 1, 'archive', 'e' || :n || '-' || :client_id || '-' || random(), 'f', '{"title": "t"}', 'k/' || md5(random()::text), 16369, 'video/mp4', md5(random()::text), 'http://127.0.0.1/v', NULL, NULL, 2.0, 192, 144, 'h264');
UPDATE job_items AS i SET state = 'pending', reason = NULL, media_id = NULL, updated_at = now() FROM unnest(ARRAY['bench'], ARRAY[:n]::int4[]) AS u(job_id, idx) WHERE i.job_id = u.job_id AND i.idx = u.idx;
UPDATE jobs SET pending = pending - 1, imported = imported + 1 WHERE id = 'bench-' || :job RETURNING pending, webhook;
COMMIT;
"#;

/// Transactions per second of the worker's SQL under pgbench, on a database with our schema.
pub async fn pgbench(
    migrate: impl std::future::Future<Output = String>,
    clients: u32,
) -> anyhow::Result<f64> {
    let db = migrate.await;
    let setup = "
        INSERT INTO projects (id, handle, webhook_secret) VALUES (1, 'bench', 'whsec_x') ON CONFLICT DO NOTHING;
        INSERT INTO jobs (id, project_id, system_name, total, pending)
            SELECT 'bench-' || g, 1, 'archive', 100000000, 100000000 FROM generate_series(0, 9) g;
        INSERT INTO jobs (id, project_id, system_name, total, pending) VALUES ('bench', 1, 'archive', 100000, 100000);
        INSERT INTO job_items (job_id, idx, external_id, url, file_name, metadata)
            SELECT 'bench', g, 'e' || g, 'http://127.0.0.1/v', 'f', '{}' FROM generate_series(1, 100000) g;";
    psql(Some(&db), setup)?;

    run_pgbench(&db, WORKER_SQL, clients)
}

/// The minimal work one imported video needs (upsert its entry, mark its item, count it on
/// its job), one transaction per video: the same schema and script as the project's
/// reference baseline `pg.sh`, kept here so the bench needs nothing outside the repository.
const MINIMAL_SCHEMA: &str = "
CREATE TABLE jobs(id bigint primary key, done int not null default 0);
CREATE TABLE items(job_id bigint, idx int, state text, primary key(job_id, idx));
CREATE TABLE videos(id bigserial primary key, project_id int, system_name text, external_id text, file_name text, metadata jsonb, size bigint, sha256 text, updated_at timestamptz default now(), unique(project_id, system_name, external_id));
INSERT INTO jobs SELECT g FROM generate_series(1,1000) g;
INSERT INTO items SELECT j, i, 'queued' FROM generate_series(1,1000) j, generate_series(1,1000) i;";

const MINIMAL_SQL: &str = r#"
\set j random(1, 1000)
\set i random(1, 1000)
\set e random(1, 10000000)
BEGIN;
INSERT INTO videos(project_id, system_name, external_id, file_name, metadata, size, sha256) VALUES (1, 'archive', :e, 'f', '{"title":"x","credit":"y"}', 1000, 'abc') ON CONFLICT (project_id, system_name, external_id) DO UPDATE SET file_name = EXCLUDED.file_name, metadata = EXCLUDED.metadata, updated_at = now();
UPDATE items SET state = 'imported' WHERE job_id = :j AND idx = :i;
UPDATE jobs SET done = done + 1 WHERE id = :j;
END;
"#;

/// Transactions per second of the minimal per-video work, 8 clients, 15 s, in a throw-away
/// database (what `pg.sh` measures).
pub async fn minimal_pgbench() -> anyhow::Result<f64> {
    let db = format!("vib_minimal_{}", std::process::id());
    psql(None, &format!("CREATE DATABASE {db}"))?;
    let result = async {
        psql(Some(&db), MINIMAL_SCHEMA)?;
        run_pgbench(&db, MINIMAL_SQL, 8)
    }
    .await;
    let _ = psql(None, &format!("DROP DATABASE {db} WITH (FORCE)"));
    result
}

/// Runs pgbench with `script` for 15 s and returns its tps.
fn run_pgbench(db: &str, script: &str, clients: u32) -> anyhow::Result<f64> {
    let path = std::env::temp_dir().join(format!("video-import-bench-{}.sql", std::process::id()));
    std::fs::write(&path, script)?;
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            "15",
            "-f",
        ])
        .arg(&path)
        .arg(db)
        .output()?;
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find(|l| l.starts_with("tps ="))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench output: {text}"))
}

/// Runs `sql` with psql as postgres on 127.0.0.1 (in `db`, or the default database).
pub fn psql(db: Option<&str>, sql: &str) -> anyhow::Result<()> {
    let mut command = Command::new("psql");
    command.args(["-q", "-h", "127.0.0.1", "-U", "postgres"]);
    if let Some(db) = db {
        command.args(["-d", db]);
    }
    let status = command.args(["-c", sql]).status()?;
    anyhow::ensure!(status.success(), "psql failed: {sql:.60}");
    Ok(())
}

/// Messages per second through a quorum queue: persistent publishes with confirms,
/// consumed with manual acks, both at once.
pub async fn lapin_loop(messages: usize) -> anyhow::Result<f64> {
    let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let queue = format!("bench-raw-{}", std::process::id());
    let publisher = Connection::connect(url, ConnectionProperties::default()).await?;
    let consumer_conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let pch = publisher.create_channel().await?;
    let cch = consumer_conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    pch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
        .await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    cch.basic_qos(200, BasicQosOptions::default()).await?;
    let mut consumer = cch
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut seen = 0;
        while let Some(Ok(delivery)) = consumer.next().await {
            delivery.ack(BasicAckOptions::default()).await.ok();
            seen += 1;
            if seen == messages {
                break;
            }
        }
    });
    let payload = br#"{"job_id":"abcdefghijkl","idx":1,"attempt":0}"#;
    for chunk in (0..messages).collect::<Vec<_>>().chunks(1000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for _ in chunk {
            confirms.push(
                pch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    payload,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?,
            );
        }
        futures::future::try_join_all(confirms).await?;
    }
    tokio::time::timeout(Duration::from_secs(120), consume).await??;
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    pch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(rate)
}

/// Bytes per second of `curl -o FILE URL`.
pub fn curl(url: &str, out: &std::path::Path) -> anyhow::Result<f64> {
    curl_with(url, out, &[])
}

/// [`curl`] with extra request headers (`"Authorization: Bearer …"`).
pub fn curl_with(url: &str, out: &std::path::Path, headers: &[&str]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut command = Command::new("curl");
    command.args(["-s", "-f", "-o"]).arg(out);
    for header in headers {
        command.args(["-H", header]);
    }
    let status = command.arg(url).status()?;
    anyhow::ensure!(status.success(), "curl failed");
    let bytes = std::fs::metadata(out)?.len();
    let rate = bytes as f64 / started.elapsed().as_secs_f64();
    std::fs::remove_file(out)?;
    Ok(rate)
}

/// A raw baseline measured before and after a scenario, each time after a `CHECKPOINT`, so
/// that a machine whose speed drifts during the run (another process, PostgreSQL's own
/// background writes) shows as a spread between the two instead of moving the ratio.
#[derive(Debug, Clone, Copy)]
pub struct Bracket {
    pub before: f64,
    pub after: f64,
}

impl Bracket {
    /// The mean of both measurements: what a scenario's figure is compared with.
    pub fn mean(&self) -> f64 {
        (self.before + self.after) / 2.0
    }

    /// `before / after (mean M) unit`, rounded for a table.
    pub fn describe(&self, unit: &str) -> String {
        format!(
            "{:.0} before, {:.0} after (mean {:.0}) {unit}",
            self.before,
            self.after,
            self.mean()
        )
    }
}

/// Writes every dirty page of the machine's PostgreSQL to disk, so that the next
/// measurement does not pay for the previous one's writes.
pub fn checkpoint() -> anyhow::Result<()> {
    psql(None, "CHECKPOINT")
}

/// [`minimal_pgbench`] after a checkpoint.
pub async fn minimal_after_checkpoint() -> anyhow::Result<f64> {
    checkpoint()?;
    minimal_pgbench().await
}

/// Bytes per second of `curl --parallel` fetching every `(url, file name)` into `dir` with
/// at most `concurrency` transfers at once, then syncing every file to disk (`sync FILE…`,
/// one fsync each): the raw limit of downloading the same files into the same filesystem
/// durably. The files are removed afterwards.
pub fn curl_parallel(
    files: &[(String, String)],
    dir: &std::path::Path,
    concurrency: usize,
) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("curl.config");
    let mut text = String::new();
    for (url, name) in files {
        text.push_str(&format!(
            "url = \"{url}\"\noutput = \"{}\"\n",
            dir.join(name).display()
        ));
    }
    std::fs::write(&config, text)?;
    let started = Instant::now();
    let status = Command::new("curl")
        .args([
            "-s",
            "-f",
            "--no-progress-meter",
            "--parallel",
            "--parallel-max",
        ])
        .arg(concurrency.to_string())
        .arg("-K")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "curl --parallel failed: {status}");
    let paths: Vec<std::path::PathBuf> = files.iter().map(|(_, n)| dir.join(n)).collect();
    for chunk in paths.chunks(500) {
        let status = Command::new("sync").args(chunk).status()?;
        anyhow::ensure!(status.success(), "sync failed: {status}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut bytes = 0;
    for path in &paths {
        bytes += std::fs::metadata(path)?.len();
        std::fs::remove_file(path)?;
    }
    std::fs::remove_file(&config)?;
    Ok(bytes as f64 / elapsed)
}

/// What [`stored_files`] measured.
#[derive(Debug, Clone, Copy)]
pub struct FilesRate {
    /// Files created, written and synced per second.
    pub per_second: f64,
    /// The machine's busy CPU time per file, µs (every process and the kernel's threads).
    pub machine_us: f64,
}

/// Files in one [`stored_files`] pass.
pub const STORED_FILES: usize = 16_000;
/// Threads writing at once in [`stored_files`], as many as the minimal pgbench's clients.
pub const FILE_WRITERS: usize = 8;
/// Files per folder sync in [`stored_files`]: the import shares a folder's sync among the
/// uploads that end while one runs, about one sync per 3–4 files in scenario 1.
const FILES_PER_FOLDER_SYNC: usize = 4;

/// The raw cost of storing scenario 1's videos durably, without downloading or recording
/// them: `FILE_WRITERS` threads create [`STORED_FILES`] new files of `size` bytes in a new
/// folder `dir` on the storage's filesystem, each written once and synced (`fsync`), the
/// folder synced once per `FILES_PER_FOLDER_SYNC` files. The files stay until the harness
/// exits, as the stacks' stored files do (`video_import_tests::remove_folder`): removed
/// now, they would make the next run's files dearer (ext4 avoids inodes freed recently).
pub fn stored_files(dir: &std::path::Path, size: usize) -> anyhow::Result<FilesRate> {
    let measured = write_and_sync_files(dir, size);
    video_import_tests::remove_folder(dir.to_path_buf());
    measured
}

/// [`stored_files`] without the removal of `dir`.
fn write_and_sync_files(dir: &std::path::Path, size: usize) -> anyhow::Result<FilesRate> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    std::fs::File::open(dir)?.sync_all()?;
    let body = vec![0x5a_u8; size];
    let busy = crate::polling::machine_busy_seconds();
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let writers: Vec<_> = (0..FILE_WRITERS)
            .map(|writer| {
                let body = &body;
                scope.spawn(move || -> std::io::Result<()> {
                    for n in 0..STORED_FILES / FILE_WRITERS {
                        let mut file = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(dir.join(format!("{writer}-{n}")))?;
                        file.write_all(body)?;
                        file.sync_all()?;
                        if n % FILES_PER_FOLDER_SYNC == FILES_PER_FOLDER_SYNC - 1 {
                            std::fs::File::open(dir)?.sync_all()?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("a file writer does not panic")?;
        }
        Ok(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let busy = crate::polling::machine_busy_seconds() - busy;
    Ok(FilesRate {
        per_second: STORED_FILES as f64 / seconds,
        machine_us: busy * 1e6 / STORED_FILES as f64,
    })
}
