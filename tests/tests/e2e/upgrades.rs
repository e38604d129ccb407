//! Upgrades: a database an old release left behind is migrated without losing a row, and a
//! deployment restarted process by process loses and duplicates nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use video_import_shared::store::migrate;
use video_import_tests::receiver::Receiver;
use video_import_tests::videos::{fixture, sha256, VideoServer};
use video_import_tests::{batch, files_below, Database, Kind, Options, Stack, A_FILE_EACH};

/// The tables of migration 0001, each with a key that orders its rows.
const FIRST_TABLES: [(&str, &str); 8] = [
    ("projects", "handle"),
    ("tokens", "token_hash"),
    ("jobs", "id"),
    ("job_items", "job_id, idx"),
    ("media_entries", "id"),
    ("outbox", "id"),
    ("webhook_deliveries", "job_id"),
    ("webhook_attempts", "id"),
];

/// The token the old release issued (only its hash is in the database).
const OLD_TOKEN: &str = "vit_issued-by-the-old-release";
const REVOKED_TOKEN: &str = "vit_revoked-under-the-old-release";

/// What migration 0001's tables hold after a while in production: two projects, tokens (one
/// revoked), a finished job with its delivered webhook and attempts, an unfinished job whose
/// videos are imported, failed and pending (the pending ones still in the outbox, as the old
/// release queued them: a `fetch` row per video without the video), and their entries.
fn old_release_data(secret: &str, videos: &VideoServer, webhook: &str) -> String {
    let token = sha256(OLD_TOKEN.as_bytes());
    let revoked = sha256(REVOKED_TOKEN.as_bytes());
    let mp4 = fixture("sample.mp4");
    let (size, digest) = (mp4.len(), sha256(&mp4));
    let url = |n: &str| videos.url(&format!("/videos/sample.mp4?old={n}"));
    let (a, b, c, d, e, f, g) = (
        url("a"),
        url("b"),
        url("c"),
        url("d"),
        videos.url("/videos/gone.mp4"),
        url("f"),
        url("g"),
    );
    format!(
        r#"
INSERT INTO projects (handle, webhook_secret, daily_limit, metadata_schema, created_at)
VALUES ('archive', '{secret}', 5000, '{{"type": "object", "required": ["title"]}}', '2025-01-02 03:04:05+00'),
       ('newsroom', 'whsec_bmV3c3Jvb20tc2VjcmV0LW9mLTMyLWJ5dGVzISE=', NULL, NULL, '2025-02-03 04:05:06+00');
INSERT INTO tokens (project_id, token_hash, scopes, created_at, expires_at, revoked_at)
SELECT id, '{token}', ARRAY['public-api:write', 'public-api:read'], '2025-01-02 03:05:00+00', NULL, NULL
FROM projects WHERE handle = 'archive';
INSERT INTO tokens (project_id, token_hash, scopes, created_at, expires_at, revoked_at)
SELECT id, '{revoked}', ARRAY['public-api:write'], '2025-01-03 00:00:00+00', '2030-01-01 00:00:00+00', '2025-06-01 12:00:00+00'
FROM projects WHERE handle = 'archive';

INSERT INTO jobs (id, project_id, system_name, webhook, context, state, total, pending,
                  imported, skipped, failed, started_at, finished_at)
SELECT 'oldjobdone01', id, 'legacy-cms', '{webhook}', '{{
  "batch": 1
}}', 'success', 3, 0, 2, 1, 0, '2025-03-01 10:00:00+00', '2025-03-01 10:00:07+00'
FROM projects WHERE handle = 'archive';
INSERT INTO jobs (id, project_id, system_name, webhook, context, state, total, pending,
                  imported, skipped, failed, started_at, finished_at)
SELECT 'oldjobopen01', id, 'legacy-cms', '{webhook}', '{{"batch": 2}}', 'started', 4, 2, 1, 0, 1,
       '2025-03-02 10:00:00+00', NULL
FROM projects WHERE handle = 'archive';

INSERT INTO job_items (job_id, idx, external_id, url, file_name, metadata, state, reason,
                       media_id, attempts, last_error, updated_at) VALUES
 ('oldjobdone01', 0, 'a', '{a}', 'a.mp4', '{{"title": "A"}}', 'imported', NULL, 'oldmediaaaa1', 0, NULL, '2025-03-01 10:00:03+00'),
 ('oldjobdone01', 1, 'b', '{b}', 'b.mp4', '{{"title": "B"}}', 'imported', NULL, 'oldmediabbb1', 1, 'the server answered 503 Service Unavailable for the video URL', '2025-03-01 10:00:06+00'),
 ('oldjobdone01', 2, 'c', '{c}', 'c.mp4', '{{"title": "C"}}', 'skipped', 'already exists', 'oldmediaccc1', 0, NULL, '2025-03-01 10:00:07+00'),
 ('oldjobopen01', 0, 'd', '{d}', 'd.mp4', '{{"title": "D"}}', 'imported', NULL, 'oldmediaddd1', 0, NULL, '2025-03-02 10:00:02+00'),
 ('oldjobopen01', 1, 'e', '{e}', 'e.mp4', '{{"title": "E"}}', 'failed', 'the server answered 404 Not Found for the video URL', NULL, 0, NULL, '2025-03-02 10:00:02+00'),
 ('oldjobopen01', 2, 'f', '{f}', 'f.mp4', '{{"title": "F"}}', 'pending', NULL, NULL, 1, 'the server answered 503 Service Unavailable for the video URL', '2025-03-02 10:00:03+00'),
 ('oldjobopen01', 3, 'g', '{g}', 'g.mp4', '{{"title": "G"}}', 'pending', NULL, NULL, 0, NULL, '2025-03-02 10:00:00+00');

INSERT INTO media_entries (id, project_id, system_name, external_id, version, file_name,
                           metadata, asset_key, asset_size, mime_type, sha256, original_url,
                           created_at, updated_at)
SELECT m.id, p.id, 'legacy-cms', m.ext, m.version, m.ext || '.mp4', m.metadata::jsonb,
       p.id || '/' || m.id || '.mp4', {size}, 'video/mp4', '{digest}', m.url,
       '2025-02-01 00:00:00+00', m.updated::timestamptz
FROM projects p, (VALUES
  ('oldmediaaaa1', 'a', 1, '{{"title": "A"}}', '{a}', '2025-03-01 10:00:03+00'),
  ('oldmediabbb1', 'b', 2, '{{"title": "B"}}', '{b}', '2025-03-01 10:00:06+00'),
  ('oldmediaccc1', 'c', 1, '{{"title": "C"}}', '{c}', '2025-02-01 00:00:00+00'),
  ('oldmediaddd1', 'd', 1, '{{"title": "D"}}', '{d}', '2025-03-02 10:00:02+00')
) AS m(id, ext, version, metadata, url, updated)
WHERE p.handle = 'archive';

INSERT INTO webhook_deliveries (job_id, webhook_id, url, state, attempts, last_error,
                                delivered_at, created_at)
VALUES ('oldjobdone01', 'msg_oldjobdone01', '{webhook}', 'delivered', 2,
        'the receiver answered 500 Internal Server Error', '2025-03-01 10:00:13+00',
        '2025-03-01 10:00:07+00');
INSERT INTO webhook_attempts (job_id, attempted_at, http_status, error, duration_ms) VALUES
 ('oldjobdone01', '2025-03-01 10:00:08+00', 500, 'the receiver answered 500 Internal Server Error', 120),
 ('oldjobdone01', '2025-03-01 10:00:13+00', 204, NULL, 35);

INSERT INTO outbox (routing_key, payload, created_at) VALUES
 ('fetch', '{{"job_id": "oldjobopen01", "idx": 2, "attempt": 1}}', '2025-03-02 10:00:03+00'),
 ('fetch', '{{"job_id": "oldjobopen01", "idx": 3, "attempt": 0}}', '2025-03-02 10:00:00+00');
"#
    )
}

/// Every row of `table` as JSON, ordered by `key`.
async fn rows(client: &tokio_postgres::Client, table: &str, key: &str) -> Vec<Value> {
    client
        .query(
            &format!("SELECT to_jsonb(t) FROM {table} t ORDER BY {key}"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("reading {table}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The rows of every table of migration 0001.
async fn snapshot(client: &tokio_postgres::Client) -> BTreeMap<&'static str, Vec<Value>> {
    let mut tables = BTreeMap::new();
    for (table, key) in FIRST_TABLES {
        tables.insert(table, rows(client, table, key).await);
    }
    tables
}

/// Columns later migrations added to migration 0001's tables, with the value each must have
/// in a row written before it existed. A migration that adds a column to these tables fails
/// this test until the column is listed here, with the value old rows get.
fn added_columns() -> BTreeMap<(&'static str, &'static str), Value> {
    BTreeMap::from([
        // 0002: secret rotation and redelivery rounds.
        (("projects", "previous_secret"), Value::Null),
        (("projects", "previous_secret_expires_at"), Value::Null),
        (("webhook_deliveries", "round_start"), json!(0)),
        // 0003: source validators and technical metadata, unknown for old entries.
        (("media_entries", "source_etag"), Value::Null),
        (("media_entries", "source_last_modified"), Value::Null),
        (("media_entries", "duration_seconds"), Value::Null),
        (("media_entries", "width"), Value::Null),
        (("media_entries", "height"), Value::Null),
        (("media_entries", "video_codec"), Value::Null),
        // 0007: cancellation.
        (("jobs", "cancelled_at"), Value::Null),
        // 0009: trace ids.
        (("jobs", "trace_id"), Value::Null),
        (("outbox", "traceparent"), Value::Null),
        // 0011: held deliveries.
        (("webhook_deliveries", "held_host"), Value::Null),
        (("webhook_deliveries", "held_attempt"), Value::Null),
        (("webhook_deliveries", "held_at"), Value::Null),
        // 0012: webhook rounds: every delivery and attempt from before is of round 1.
        (("webhook_deliveries", "round"), json!(1)),
        (("webhook_deliveries", "held_round"), Value::Null),
        (("webhook_attempts", "round"), json!(1)),
        (("webhook_attempts", "number"), Value::Null),
        // 0013: retries.
        (("jobs", "retry_of"), Value::Null),
        // 0014: checksums.
        (("job_items", "expected_sha256"), Value::Null),
        (("job_items", "expected_md5"), Value::Null),
        (("media_entries", "md5"), Value::Null),
        // 0016: stored files checked again; no entry from before is marked damaged.
        (("media_entries", "damaged_at"), Value::Null),
        (("media_entries", "damage_kind"), Value::Null),
        (("media_entries", "damage"), Value::Null),
        // 0017: retention: no job of the old release was pruned.
        (("jobs", "pruned_at"), Value::Null),
    ])
}

#[tokio::test]
async fn a_database_from_the_first_release_upgrades_with_every_row_intact() {
    video_import_shared::telemetry::init_tls();
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"the-old-release-webhook-secret!!")
    );

    // The schema as the first release left it, and its data.
    let old = Database::create().await;
    let pool = video_import_shared::db::connect(&old.settings())
        .await
        .expect("a pool on the test database");
    assert_eq!(migrate::run_until(&pool, 1).await.unwrap(), [1]);
    let client = old.client().await;
    client
        .batch_execute(&old_release_data(&secret, &videos, &receiver.url))
        .await
        .expect("the first release's data fits its schema");
    let before = snapshot(&client).await;

    // Upgrade.
    let applied = migrate::run(&pool).await.expect("the upgrade applies");
    assert_eq!(applied, migrate::versions()[1..]);
    let after = snapshot(&client).await;

    // Every row is still there with every value; the columns added since hold what the
    // migrations give old rows.
    let added = added_columns();
    for (table, old_rows) in &before {
        let new_rows = &after[table];
        assert_eq!(
            new_rows.len(),
            old_rows.len(),
            "{table}: rows lost or added"
        );
        for (old_row, new_row) in old_rows.iter().zip(new_rows) {
            let (old_row, new_row) = (old_row.as_object().unwrap(), new_row.as_object().unwrap());
            for (column, value) in old_row {
                assert_eq!(
                    &new_row[column], value,
                    "{table}.{column} changed: {new_row:?}"
                );
            }
            let new_columns: BTreeSet<&str> = new_row
                .keys()
                .filter(|c| !old_row.contains_key(*c))
                .map(String::as_str)
                .collect();
            let expected: BTreeSet<&str> = added
                .keys()
                .filter(|(t, _)| t == table)
                .map(|(_, c)| *c)
                .collect();
            assert_eq!(new_columns, expected, "{table}: columns added since 0001");
            for column in new_columns {
                assert_eq!(
                    new_row[column],
                    added[&(*table, column)],
                    "{table}.{column} of a row from before it existed"
                );
            }
        }
    }
    // The tables added since are empty: nothing from the old release belongs there (the old
    // release queued its pending videos in the outbox, not in `dispatch`).
    for table in [
        "idempotency_keys",
        "dispatch",
        "source_rules",
        "storage_verify",
    ] {
        assert!(rows(&client, table, "1").await.is_empty(), "{table}");
    }
    let indexes: BTreeSet<String> = client
        .query(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for index in [
        "jobs_project_state_started",
        "media_entries_asset_key",
        "jobs_unfinished",
        "webhook_deliveries_pending",
        "webhook_deliveries_held",
        "media_entries_damaged",
        "jobs_retained",
        "idempotency_keys_created",
    ] {
        assert!(indexes.contains(index), "{index} missing: {indexes:?}");
    }
    let fillfactor: Vec<(String, Vec<String>)> = client
        .query(
            "SELECT relname::text, reloptions FROM pg_class
             WHERE relname IN ('job_items', 'jobs', 'media_entries', 'webhook_deliveries')
             ORDER BY relname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get::<_, Option<Vec<String>>>(1).unwrap_or_default(),
            )
        })
        .collect();
    let expected_fillfactor = [
        ("job_items", "fillfactor=70"),
        ("jobs", "fillfactor=50"),
        ("media_entries", "fillfactor=80"),
        ("webhook_deliveries", "fillfactor=70"),
    ];
    for ((relation, options), (name, option)) in fillfactor.iter().zip(expected_fillfactor) {
        assert_eq!(relation, name);
        assert!(
            options.iter().any(|o| o == option),
            "{relation}: {options:?}"
        );
    }

    // Again: nothing to apply, each version recorded once.
    assert_eq!(migrate::run(&pool).await.unwrap(), Vec::<i32>::new());
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, migrate::versions());
    drop(pool);

    // The new release runs on the upgraded database: the old token still works, the old
    // job's queued videos are imported and its webhook is signed with the old secret.
    let stack = Stack::start(Options {
        database: Some(old.name.clone()),
        // The old release's jobs finished in 2025: retention (30 days by default) would
        // prune the finished one before it is looked at below.
        env: vec![(
            "VIDEO_IMPORT__RETENTION__FINISHED_JOBS_SECS".into(),
            "0".into(),
        )],
        ..Options::default()
    })
    .await;
    let status = stack.wait_finished(OLD_TOKEN, "oldjobopen01", 60).await;
    assert_eq!(
        status["overview"],
        json!({"total": 4, "imported": 3, "skipped": 0, "failed": 1, "pending": 0}),
        "{status}"
    );
    assert_eq!(status["state"], "failed");
    assert_eq!(status["videos"][0]["video"]["mediaId"], "oldmediaddd1");
    assert_eq!(
        status["videos"][1]["reason"],
        "the server answered 404 Not Found for the video URL"
    );
    let hooks = receiver.wait_for(1, 30).await;
    let hook = &hooks[0];
    assert_eq!(hook.header("webhook-id"), "msg_oldjobopen01");
    assert!(hook.signature_valid(&secret), "signed with the old secret");
    let raw = String::from_utf8(hook.body.to_vec()).unwrap();
    assert!(raw.contains(r#""context":{"batch": 2}"#), "{raw}");
    assert_eq!(
        hook.json()["failures"],
        json!([{"externalId": "e", "reason": "the server answered 404 Not Found for the video URL"}])
    );
    let done = stack.status(OLD_TOKEN, "oldjobdone01").await;
    assert_eq!(done["state"], "success");
    assert_eq!(
        done["overview"],
        json!({"total": 3, "imported": 2, "skipped": 1, "failed": 0, "pending": 0})
    );
    assert_eq!(done["videos"][2]["reason"], "already exists");
    assert_eq!(done["webhook"]["state"], "delivered", "{done}");
    assert_eq!(done["webhook"]["attempts"], 2);
    let (code, entry) = stack
        .get(Some(OLD_TOKEN), "/api/v1/mediaLibrary/oldmediabbb1")
        .await;
    assert_eq!(code, 200, "{entry}");
    assert_eq!(entry["version"], 2);
    assert_eq!(entry["metadata"], json!({"title": "B"}));
    assert_eq!(
        entry["asset"]["originalUrl"],
        videos.url("/videos/sample.mp4?old=b")
    );
    let (code, refused) = stack
        .get(Some(REVOKED_TOKEN), "/api/v1/import/videos")
        .await;
    assert_eq!(code, 401, "{refused}");
    assert_eq!(
        refused["error_details"]["access_token"],
        "The access token was revoked."
    );
    // Exactly the two queued videos were downloaded, once each (the counter ignores the
    // query string), and the failed one was not tried again.
    assert_eq!(videos.hits("/videos/sample.mp4"), 2);
    assert_eq!(videos.hits("/videos/gone.mp4"), 0);
    let entries = stack
        .sql("SELECT count(*), count(*) FILTER (WHERE duration_seconds IS NOT NULL) FROM media_entries")
        .await;
    assert_eq!(
        entries[0].get::<_, i64>(0),
        6,
        "four old entries and two new ones"
    );
    assert_eq!(
        entries[0].get::<_, i64>(1),
        2,
        "only new entries were probed"
    );

    // On empty databases, two migrations at once: from two pools in this process, and from
    // two `video-import-api migrate` processes. Both succeed, each version is recorded once.
    let fresh = Database::create().await;
    let (a, b) = tokio::join!(
        async {
            let pool = video_import_shared::db::connect(&fresh.settings()).await?;
            migrate::run(&pool).await
        },
        async {
            let pool = video_import_shared::db::connect(&fresh.settings()).await?;
            migrate::run(&pool).await
        },
    );
    let (a, b) = (a.expect("first migration"), b.expect("second migration"));
    let mut both: Vec<i32> = a.iter().chain(&b).copied().collect();
    both.sort();
    assert_eq!(both, migrate::versions(), "{a:?} and {b:?}");
    let by_processes = Database::create().await;
    let env = [("VIDEO_IMPORT__DATABASE__URL", by_processes.url.as_str())];
    let (a, b) = tokio::join!(
        stack.run_binary("video-import-api", &["migrate"], &env),
        stack.run_binary("video-import-api", &["migrate"], &env),
    );
    assert!(a.status.success(), "{}", a.stderr);
    assert!(b.status.success(), "{}", b.stderr);
    for database in [&fresh, &by_processes] {
        let versions: Vec<i32> = database
            .client()
            .await
            .query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, migrate::versions(), "{}", database.name);
    }
    stack.finish().await;
}

/// Videos in the rolling restart, as batches of `PER_BATCH`.
const BATCHES: usize = 20;
const PER_BATCH: usize = 100;
/// Each video is three 1 KiB pieces this many milliseconds apart (about 210 ms a video).
const PIECE_MS: u64 = 70;

/// POSTs `body` with `key` until the API answers 200, retrying the same request when the
/// connection fails (the API restarting) or the API answers 5xx; the job id and the tries.
async fn post_until_accepted(
    http: &reqwest::Client,
    api_url: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> (String, u32) {
    let mut tries = 0;
    let started = Instant::now();
    loop {
        tries += 1;
        let answer = http
            .post(format!("{api_url}/api/v1/import/videos"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        match answer {
            Ok(response) if response.status() == 200 => {
                let job: Value = response.json().await.expect("a JSON answer");
                return (job["id"].as_str().expect("a job id").to_string(), tries);
            }
            Ok(response) if response.status().is_server_error() => {}
            Ok(response) => panic!(
                "batch {key} answered {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "batch {key} was not accepted in 2 minutes ({tries} tries)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_and_duplicates_nothing() {
    let began = Instant::now();
    let mut stack = Stack::start(Options {
        workers: 2,
        env: vec![
            // Enough slots that the import runs, few enough that it lasts through the
            // restarts (16 slots × ~210 ms a video: about 30 s for the 2,000 videos).
            ("VIDEO_IMPORT__FETCH__CONCURRENCY".into(), "8".into()),
            // A SIGTERMed worker finishes its downloads in flight within this.
            (
                "VIDEO_IMPORT__FETCH__SHUTDOWN_GRACE_SECS".into(),
                "5".into(),
            ),
            // A file each: the stored files are counted against the entries below.
            (A_FILE_EACH.0.into(), A_FILE_EACH.1.into()),
        ],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("rolling").await;
    let url =
        |batch: usize, i: usize| videos.url(&format!("/slow/{PIECE_MS}/sample.mp4?r={batch}-{i}"));
    let bodies: Vec<Value> = (0..BATCHES)
        .map(|b| {
            (0..PER_BATCH)
                .fold(batch("archive").webhook(&receiver.url), |batch, i| {
                    batch.video(url(b, i), format!("r{b}-{i}"))
                })
                .build()
        })
        .collect();

    // The client: a batch every half second, each retried with its key until accepted.
    let client = {
        let (http, api_url, token) = (
            stack.http.clone(),
            stack.api_url.clone(),
            project.token.clone(),
        );
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            for (n, body) in bodies.iter().enumerate() {
                let key = format!("rolling-batch-{n}");
                accepted.push(post_until_accepted(&http, &api_url, &token, &key, body).await);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            accepted
        })
    };

    // Meanwhile, twice: the API, each worker and the notifier, one at a time. The API stays
    // down for longer than the client's pause between batches, so that a POST meets it down.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut restarts = Vec::new();
    let mut workers: Vec<String> = stack
        .running(Kind::Worker)
        .into_iter()
        .map(|w| w.name)
        .collect();
    for round in 1..=2 {
        for kind in [Kind::Api, Kind::Worker, Kind::Notifier] {
            for old in stack.running(kind) {
                let started = Instant::now();
                let down = match kind {
                    Kind::Api => Duration::from_millis(1500),
                    _ => Duration::ZERO,
                };
                let new = stack.restart_after(&old, down).await;
                if kind == Kind::Worker {
                    workers.push(new.name.clone());
                }
                restarts.push(format!(
                    "round {round}: {} -> {} in {:.2} s",
                    old.name,
                    new.name,
                    started.elapsed().as_secs_f64()
                ));
                // Let the new process take its share before the next one goes.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let restarted_at = began.elapsed();
    let accepted = client.await.expect("the client task");
    let posted_at = began.elapsed();

    // Every job finishes and its webhook is delivered.
    let jobs: Vec<String> = accepted.iter().map(|(job, _)| job.clone()).collect();
    for job in &jobs {
        let what = format!("job {job} finished with its webhook delivered");
        stack
            .poll_until(&what, Duration::from_secs(180), async || {
                let status = stack.status(&project.token, job).await;
                if status["finished"] == true && status["webhook"]["state"] == "delivered" {
                    Ok(())
                } else {
                    Err(format!(
                        "{} webhook {}",
                        status["overview"], status["webhook"]
                    ))
                }
            })
            .await;
    }
    let finished_at = began.elapsed();
    eprintln!(
        "rolling restart: restarts done at {:.1} s, all 20 batches accepted at {:.1} s ({} tries), \
         every job finished and notified at {:.1} s\n  {}",
        restarted_at.as_secs_f64(),
        posted_at.as_secs_f64(),
        accepted.iter().map(|(_, tries)| tries).sum::<u32>(),
        finished_at.as_secs_f64(),
        restarts.join("\n  ")
    );

    // Each POST got its own job; no retry made a second one (and some POST was retried).
    let tries: u32 = accepted.iter().map(|(_, tries)| tries).sum();
    assert!(
        tries > BATCHES as u32,
        "no POST met the API down: {tries} tries"
    );
    let distinct: BTreeSet<&String> = jobs.iter().collect();
    assert_eq!(distinct.len(), BATCHES, "{jobs:?}");
    let count: i64 = stack.sql("SELECT count(*) FROM jobs").await[0].get(0);
    assert_eq!(count, BATCHES as i64, "jobs in the database");
    // Every video of every job imported, none failed or skipped.
    for job in &jobs {
        let status = stack.status(&project.token, job).await;
        assert_eq!(status["state"], "success", "{job}: {}", status["overview"]);
        assert_eq!(
            status["overview"],
            json!({"total": PER_BATCH, "imported": PER_BATCH, "skipped": 0, "failed": 0, "pending": 0}),
            "{job}"
        );
    }
    // One entry per video, each written once, each with its stored file.
    let entries = stack
        .sql("SELECT count(*), count(DISTINCT external_id), min(version)::int8, max(version)::int8 FROM media_entries")
        .await;
    let total = (BATCHES * PER_BATCH) as i64;
    assert_eq!(entries[0].get::<_, i64>(0), total, "entries");
    assert_eq!(entries[0].get::<_, i64>(1), total, "distinct external ids");
    assert_eq!(entries[0].get::<_, i64>(2), 1, "every entry at version 1");
    assert_eq!(entries[0].get::<_, i64>(3), 1, "every entry at version 1");
    let stored = files_below(&stack.dir.join("videos"));
    assert_eq!(
        stored.len(),
        total as usize,
        "stored files (no orphan, none missing)"
    );
    // Every URL was downloaded to its end; count the ones fetched more than once.
    let counts = videos.counts();
    let prefix = format!("/slow/{PIECE_MS}/sample.mp4?");
    let requested: Vec<u32> = counts
        .iter()
        .filter(|(label, _)| label.starts_with(&prefix) && !label.ends_with(" complete"))
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(requested.len(), total as usize, "every URL was requested");
    let completed = counts
        .iter()
        .filter(|(label, _)| label.starts_with(&prefix) && label.ends_with(" complete"))
        .count();
    assert_eq!(completed, total as usize, "every URL was sent to its end");
    let again = requested.iter().filter(|n| **n > 1).count();
    eprintln!("rolling restart: {again} of {total} URLs were requested more than once");
    assert_eq!(again, 0, "a graceful restart downloads nothing twice");

    // One webhook id per job, every delivery signed; retries of an id are allowed.
    let hooks = receiver.received();
    let ids: BTreeSet<String> = hooks
        .iter()
        .map(|h| h.header("webhook-id").to_string())
        .collect();
    assert_eq!(ids.len(), BATCHES, "{ids:?}");
    for job in &jobs {
        assert!(ids.contains(&format!("msg_{job}")), "no webhook for {job}");
    }
    for hook in &hooks {
        assert!(
            hook.signature_valid(&project.secret),
            "{}",
            hook.header("webhook-id")
        );
    }
    eprintln!(
        "rolling restart: {} webhook requests for {BATCHES} jobs",
        hooks.len()
    );
    // The restarts came mid-import: every worker, the replaced ones and the last ones,
    // imported videos.
    for worker in &workers {
        assert!(
            stack.log(worker).contains("video done"),
            "{worker} imported nothing"
        );
    }
    let exited = stack.exited();
    assert!(exited.is_empty(), "exited: {exited:?}");
    assert!(
        began.elapsed() < Duration::from_secs(300),
        "{:?}",
        began.elapsed()
    );
    stack.finish().await;
}
