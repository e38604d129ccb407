//! Retention: a job finished longer ago than `retention.finished_jobs_secs` loses its
//! videos' rows, its webhook delivery and attempts, its dispatch row and its idempotency key
//! (once its 24 hours are over), keeps a tombstone that answers its status with 410 and its
//! overview, and keeps its entries; a newer job is untouched. Two workers prune at once.

use std::time::Duration;

use serde_json::{json, Value};
use video_import_tests::receiver::Receiver;
use video_import_tests::videos::VideoServer;
use video_import_tests::{batch, Kind, Options, Stack};

/// When the old job is made to have finished (and started), long before the cutoff.
const OLD_FINISHED: &str = "2026-01-02T03:04:05Z";
/// Synthetic old jobs of 1,000 videos each, so that pruning takes many batches (and both
/// workers' rounds come while it runs).
const BULK_JOBS: i64 = 60;

/// Rows of `job` in each table the pruner empties, in the order of `TABLES`.
const TABLES: [&str; 5] = [
    "job_items",
    "webhook_attempts",
    "webhook_deliveries",
    "dispatch",
    "idempotency_keys",
];

async fn rows_of(stack: &Stack, job: &str) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in TABLES {
        let n: i64 = stack
            .sql(&format!(
                "SELECT count(*) FROM {table} WHERE job_id = '{job}'"
            ))
            .await[0]
            .get(0);
        counts.push(n);
    }
    counts
}

/// POSTs `body` with an Idempotency-Key; the job id.
async fn post(stack: &Stack, token: &str, key: &str, body: &Value) -> String {
    let response = stack
        .http
        .post(format!("{}/api/v1/import/videos", stack.api_url))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("POST import");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON");
    answer["id"].as_str().expect("a job id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_finished_before_the_cutoff_is_pruned_to_a_tombstone_and_a_newer_one_is_untouched() {
    let stack = Stack::start(Options {
        workers: 2,
        env: vec![
            (
                "VIDEO_IMPORT__RETENTION__FINISHED_JOBS_SECS".into(),
                "3600".into(),
            ),
            ("VIDEO_IMPORT__RETENTION__INTERVAL_SECS".into(), "1".into()),
        ],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    // The first webhook attempt fails: a job has attempts besides its delivery.
    let receiver = Receiver::start(&[500]).await;
    let project = stack.project("keep").await;
    let body = |tag: &str| {
        batch("archive")
            .webhook(&receiver.url)
            .video(
                videos.url(&format!("/videos/sample.mp4?{tag}=1")),
                format!("{tag}1"),
            )
            .video(
                videos.url(&format!("/videos/sample.mp4?{tag}=2")),
                format!("{tag}2"),
            )
            .video(videos.url("/videos/gone.mp4"), format!("{tag}3"))
            .build()
    };
    let old = post(&stack, &project.token, "old-batch", &body("o")).await;
    let new = post(&stack, &project.token, "new-batch", &body("n")).await;
    let old_status = stack.wait_webhook(&project.token, &old, "delivered").await;
    let new_status = stack.wait_webhook(&project.token, &new, "delivered").await;
    let overview = json!({"total": 3, "imported": 2, "skipped": 0, "failed": 1, "pending": 0});
    assert_eq!(old_status["overview"], overview, "{old_status}");
    assert_eq!(new_status["overview"], overview, "{new_status}");
    let media: Vec<String> = old_status["videos"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["video"]["mediaId"].as_str().map(str::to_string))
        .collect();
    assert_eq!(media.len(), 2, "{old_status}");

    // A dispatch row left behind by the old job (a crash between handing out its last
    // videos and forgetting it), so that the pruner has one to remove.
    stack
        .sql(&format!(
            "INSERT INTO dispatch (job_id, project_id, system_name, total, next_idx)
             SELECT id, project_id, system_name, total, total FROM jobs WHERE id = '{old}'"
        ))
        .await;
    let old_rows = rows_of(&stack, &old).await;
    let new_rows = rows_of(&stack, &new).await;
    assert_eq!(old_rows[0], 3, "items");
    assert!(old_rows[1] >= 1, "attempts: {old_rows:?}");
    assert_eq!(old_rows[2..], [1, 1, 1], "delivery, dispatch, key");
    assert_eq!(new_rows[0], 3);

    // Long finished, in an old day: the old job, thirty jobs of a thousand videos, and a
    // job whose webhook is still being delivered (kept until its delivery ends).
    for sql in [
        // Each job with its items in one statement, as the API inserts them: the pruner
        // may look at any moment.
        format!(
            "WITH j AS (
                 INSERT INTO jobs (id, project_id, system_name, state, total, pending, imported,
                                   started_at, finished_at)
                 SELECT 'bulk' || g, p.id, 'archive', 'success', 1000, 0, 1000,
                        now() - interval '2 days', now() - interval '2 days'
                 FROM projects p, generate_series(1, {BULK_JOBS}) g WHERE p.handle = 'keep'
                 RETURNING id)
             INSERT INTO job_items (job_id, idx, external_id, url, file_name, metadata, state)
             SELECT j.id, i, j.id || '-' || i, 'http://archive.example/x', 'f', '{{}}', 'imported'
             FROM j, generate_series(0, 999) i"
        ),
        // Its delivery too, or the pruner could take it before the delivery exists.
        "WITH j AS (
             INSERT INTO jobs (id, project_id, system_name, webhook, state, total, pending,
                               imported, started_at, finished_at)
             SELECT 'delivering', p.id, 'archive', 'http://127.0.0.1:9/hook', 'success', 10, 0,
                    10, now() - interval '2 days', now() - interval '2 days'
             FROM projects p WHERE p.handle = 'keep'
             RETURNING id),
         d AS (
             INSERT INTO webhook_deliveries (job_id, webhook_id, url, state, attempts)
             SELECT id, 'msg_delivering', 'http://127.0.0.1:9/hook', 'pending', 4 FROM j)
         INSERT INTO job_items (job_id, idx, external_id, url, file_name, metadata, state)
         SELECT j.id, i, 'd' || i, 'http://archive.example/x', 'f', '{}', 'imported'
         FROM j, generate_series(0, 9) i"
            .into(),
        // The key first: once the job is old the pruner may take it at any moment.
        format!(
            "UPDATE idempotency_keys SET created_at = '{OLD_FINISHED}'::timestamptz - interval '5 s'
             WHERE job_id = '{old}'"
        ),
        format!(
            "UPDATE jobs SET started_at = '{OLD_FINISHED}'::timestamptz - interval '5 s',
                             finished_at = '{OLD_FINISHED}'
             WHERE id = '{old}'"
        ),
    ] {
        stack.sql(&sql).await;
    }

    // Pruned: the status answers 410 in the error shape, with when it finished and its
    // overview (already while its rows are being removed; `prunedAt` once they are gone).
    let path = format!("/api/v1/import/videos/status?id={old}");
    let gone = stack
        .poll_until(
            "the old job to be pruned",
            Duration::from_secs(60),
            async || match stack.get(Some(&project.token), &path).await {
                (410, body) if body["error_details"]["prunedAt"].is_string() => Ok(body),
                (code, body) => Err(format!("{code} {body}")),
            },
        )
        .await;
    assert_eq!(gone["status"], 410, "{gone}");
    assert_eq!(gone["error"], "Gone");
    assert!(gone["request_id"].is_string());
    let details = &gone["error_details"];
    assert_eq!(details["id"], old.as_str());
    assert_eq!(details["finishedAt"], OLD_FINISHED, "{details}");
    assert_eq!(details["overview"], overview);
    assert_eq!(details["state"], "failed");
    assert!(details["prunedAt"].is_string(), "{details}");
    let message = details["message"].as_str().unwrap();
    assert!(
        message.contains(OLD_FINISHED) && message.contains("retention.finished_jobs_secs"),
        "{message}"
    );
    stack
        .poll_until(
            "every old job to be pruned",
            Duration::from_secs(120),
            async || {
                let left: i64 = stack
                    .sql("SELECT count(*) FROM jobs WHERE id LIKE 'bulk%' AND pruned_at IS NULL")
                    .await[0]
                    .get(0);
                if left == 0 {
                    Ok(())
                } else {
                    Err(format!("{left} bulk jobs left"))
                }
            },
        )
        .await;

    // Its rows are gone from every table (the keys go last in a round), its tombstone is
    // small, its entries are kept.
    stack
        .poll_until(
            "the old job's rows to be gone from every table",
            Duration::from_secs(30),
            async || match rows_of(&stack, &old).await {
                rows if rows == [0, 0, 0, 0, 0] => Ok(()),
                rows => Err(format!("{TABLES:?}: {rows:?}")),
            },
        )
        .await;
    let tombstone = stack
        .sql(&format!(
            "SELECT context IS NULL, total, imported, failed FROM jobs WHERE id = '{old}'"
        ))
        .await;
    assert!(tombstone[0].get::<_, bool>(0), "the context is dropped");
    assert_eq!(
        (
            tombstone[0].get::<_, i32>(1),
            tombstone[0].get::<_, i32>(2),
            tombstone[0].get::<_, i32>(3)
        ),
        (3, 2, 1)
    );
    for id in &media {
        let (code, entry) = stack
            .get(Some(&project.token), &format!("/api/v1/mediaLibrary/{id}"))
            .await;
        assert_eq!(code, 200, "entry {id} of the pruned job: {entry}");
    }
    let bulk_items: i64 = stack
        .sql("SELECT count(*) FROM job_items WHERE job_id LIKE 'bulk%'")
        .await[0]
        .get(0);
    assert_eq!(bulk_items, 0);

    // The job list still shows it, with its overview and when it was pruned.
    let (code, list) = stack
        .get(Some(&project.token), "/api/v1/import/videos?limit=200")
        .await;
    assert_eq!(code, 200, "{list}");
    let listed = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == old.as_str())
        .unwrap_or_else(|| panic!("the pruned job is not listed: {list}"));
    assert_eq!(listed["overview"], overview);
    assert_eq!(listed["finishedAt"], OLD_FINISHED);
    assert!(listed["prunedAt"].is_string(), "{listed}");

    // Nothing is left to retry or to send again: 410 as well, saying so.
    let retry = stack
        .http
        .post(format!(
            "{}/api/v1/import/videos/{old}/retry",
            stack.api_url
        ))
        .bearer_auth(&project.token)
        .send()
        .await
        .expect("POST retry");
    assert_eq!(retry.status(), 410);
    let retry: Value = retry.json().await.unwrap();
    assert!(
        retry["error_details"]["message"]
            .as_str()
            .unwrap()
            .contains("import its failed videos again"),
        "{retry}"
    );
    assert_eq!(retry["error_details"]["overview"], overview);
    assert_eq!(stack.redeliver(&project.token, &old).await, 410);

    // The newer job and the one still delivering its webhook are untouched.
    assert_eq!(rows_of(&stack, &new).await, new_rows);
    let status = stack.status(&project.token, &new).await;
    assert_eq!(status["overview"], overview);
    assert_eq!(status["videos"].as_array().unwrap().len(), 3);
    assert!(status.get("prunedAt").is_none(), "{status}");
    assert_eq!(rows_of(&stack, "delivering").await[..3], [10, 0, 1]);

    // The two workers pruned one at a time: every row was counted once, over both.
    let pruned =
        |table: &str| format!("video_import_retention_rows_pruned_total{{table=\"{table}\"}}");
    let bulk_rows = BULK_JOBS as f64 * 1000.0;
    let expected = [
        ("job_items", bulk_rows + 3.0),
        ("jobs", BULK_JOBS as f64 + 1.0),
        ("webhook_attempts", old_rows[1] as f64),
        ("webhook_deliveries", 1.0),
        ("dispatch", 1.0),
        ("idempotency_keys", 1.0),
    ];
    stack
        .poll_until(
            "the pruned rows to be counted once each over both workers",
            Duration::from_secs(10),
            async || {
                let mut counted = Vec::new();
                for (table, _) in expected {
                    counted.push((table, stack.over_workers(&pruned(table)).await));
                }
                if counted == expected {
                    Ok(())
                } else {
                    Err(format!("{counted:?}, expected {expected:?}"))
                }
            },
        )
        .await;
    let batches = stack
        .over_workers("video_import_retention_batch_duration_seconds_count")
        .await;
    assert!(batches >= 2.0, "{batches} batches");
    // The oldest finished job kept is the newer one (the delivering one is left out).
    for worker in stack.running(Kind::Worker) {
        let what = format!("{}'s oldest-kept gauge to fall below an hour", worker.name);
        stack
            .poll_until(&what, Duration::from_secs(10), async || {
                let text = stack.metrics(&worker.metrics_address()).await;
                let age: f64 = text
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("video_import_retention_oldest_finished_age_seconds ")?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(f64::MAX);
                if age < 3600.0 {
                    Ok(())
                } else {
                    Err(age)
                }
            })
            .await;
    }
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}

/// A job too large for one pruning batch loses its webhook delivery with its first batch,
/// before any of its videos: a redelivery requested after that answers 410 and sends
/// nothing (no webhook ever goes out with part of the videos gone), and one requested before
/// keeps the pruner off the job (nothing of it is removed).
#[tokio::test]
async fn a_large_job_loses_its_webhook_delivery_before_its_videos_and_a_redelivery_between_answers_410(
) {
    use video_import_shared::store::retention;

    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("large").await;
    let body = |tag: &str| {
        batch("archive")
            .webhook(&receiver.url)
            .urls((0..3).map(|i| videos.url(&format!("/videos/sample.mp4?{tag}={i}"))))
            .build()
    };
    let first = post(&stack, &project.token, "first", &body("a")).await;
    let second = post(&stack, &project.token, "second", &body("b")).await;
    stack
        .wait_webhook(&project.token, &first, "delivered")
        .await;
    stack
        .wait_webhook(&project.token, &second, "delivered")
        .await;
    let pool = stack.pool().await;
    let redeliver = |job: String| {
        let (http, url, token) = (
            stack.http.clone(),
            format!("{}/api/v1/import/videos/{job}/webhook", stack.api_url),
            project.token.clone(),
        );
        async move {
            http.post(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("POST redeliver")
                .status()
                .as_u16()
        }
    };

    // The pruner's first batch of the first job (as for a job of more videos than a batch).
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let removed = retention::start_items(&tx, &first, 0, 1)
        .await
        .unwrap()
        .expect("its delivery was not pending");
    tx.commit().await.unwrap();
    assert_eq!(
        (removed.webhook_deliveries, removed.job_items),
        (1, 1),
        "{removed:?}"
    );
    assert_eq!(redeliver(first.clone()).await, 410);
    let status = stack
        .http
        .get(format!(
            "{}/api/v1/import/videos/status?id={first}",
            stack.api_url
        ))
        .bearer_auth(&project.token)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 410, "part-way pruned answers 410 too");

    // A redelivery before the first batch: the batch leaves the job alone.
    assert_eq!(redeliver(second.clone()).await, 202);
    let tx = client.transaction().await.unwrap();
    let skipped = retention::start_items(&tx, &second, 0, 1).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(skipped, None);
    assert_eq!(rows_of(&stack, &second).await[0], 3, "no video removed");
    stack
        .wait_webhook(&project.token, &second, "delivered")
        .await;
    // One webhook for the first job (its original), two for the second.
    let sent = |job: &str| {
        receiver
            .received()
            .iter()
            .filter(|r| r.json()["id"] == job)
            .count()
    };
    assert_eq!((sent(&first), sent(&second)), (1, 2));
    stack.finish().await;
}
