//! The worker against sources that misbehave on purpose, crashes and shutdowns.

use std::time::Duration;

use serde_json::{json, Value};
use video_import_shared::queue;
use video_import_shared::store::entries;
use video_import_tests::receiver::Receiver;
use video_import_tests::videos::{fixture, sha256, VideoServer};
use video_import_tests::{batch, files_below, Kind, Options, Stack, A_FILE_EACH};

fn env(pairs: &[(&str, &str)]) -> Options {
    Options::with_env(pairs)
}

#[tokio::test]
async fn a_broken_download_resumes_with_a_range_request_or_starts_again() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("resume").await;
    let job = stack
        .import(
            &project.token,
            &batch("archive").urls([
                videos.url("/drop/sample.webm"),
                videos.url("/drop-norange/sample.mp4"),
            ]),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    assert_eq!(status["state"], "success", "{status}");
    // Resumed: one full request, one Range request, no second full download.
    assert_eq!(videos.hits("/drop/sample.webm"), 1);
    assert_eq!(videos.hits("/drop/sample.webm range"), 1);
    // Could not resume: the quick retry downloaded it again from the start.
    assert_eq!(videos.hits("/drop-norange/sample.mp4"), 2);
    let rows = stack
        .sql("SELECT sha256 FROM media_entries ORDER BY external_id")
        .await;
    assert_eq!(rows[0].get::<_, String>(0), sha256(&fixture("sample.webm")));
    assert_eq!(rows[1].get::<_, String>(0), sha256(&fixture("sample.mp4")));
    stack.finish().await;
}

#[tokio::test]
async fn oversized_videos_fail_with_the_limit_named() {
    let stack = Stack::start(env(&[("VIDEO_IMPORT__FETCH__MAX_BYTES", "20000")])).await;
    let videos = VideoServer::start().await;
    let project = stack.project("big").await;
    let job = stack
        .import(
            &project.token,
            &batch("archive").urls([
                videos.url("/padded/30000/sample.mp4"),
                videos.url("/padded-chunked/30000/sample.mp4"),
                videos.url("/padded/1000/sample.mp4"),
            ]),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    let v = &status["videos"];
    for failed in [&v[0], &v[1]] {
        assert_eq!(failed["state"], "failed");
        let reason = failed["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("the video is larger than the limit")
                && reason.ends_with("fetch.max_bytes is 20000"),
            "{reason}"
        );
    }
    assert_eq!(v[2]["state"], "imported", "a video under the limit is fine");
    // Nothing of the refused videos was kept: one stored file (the pack of the third).
    let files = files_below(&stack.dir.join("videos"));
    assert_eq!(files.len(), 1, "{files:?}");
    stack.finish().await;
}

#[tokio::test]
async fn redirects_are_checked_at_every_hop_and_bounded() {
    let stack = Stack::start(env(&[
        ("VIDEO_IMPORT__FETCH__ALLOW_PRIVATE_NETWORKS", "false"),
        // The test server's address is a trusted archive host; nothing else private is.
        ("VIDEO_IMPORT__FETCH__ALLOWED_NETWORKS", "127.0.0.1/32"),
        ("VIDEO_IMPORT__FETCH__MAX_REDIRECTS", "3"),
    ]))
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("hops").await;
    let port = videos.base.rsplit(':').next().unwrap().to_string();
    let job = stack
        .import(
            &project.token,
            &batch("archive").urls([
                videos.url("/redirect/2/sample.mp4"),
                videos.url("/redirect/5/sample.mp4"),
                videos.url("/to?location=http://169.254.169.254/latest/meta-data"),
                videos.url(&format!(
                    "/to?location=http://127.0.0.2:{port}/videos/sample.mp4"
                )),
            ]),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    let v = &status["videos"];
    assert_eq!(v[0]["state"], "imported", "{status}");
    let reason = |i: usize| v[i]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason(1).contains("more than 3 redirects"), "{}", reason(1));
    assert!(
        reason(2).starts_with("refused to connect to 169.254.169.254"),
        "{}",
        reason(2)
    );
    assert!(
        reason(3).starts_with("refused to connect to 127.0.0.2"),
        "{}",
        reason(3)
    );
    stack.finish().await;
}

#[tokio::test]
async fn a_stalled_source_times_out_and_fails_after_its_retries() {
    let stack = Stack::start(env(&[("VIDEO_IMPORT__FETCH__READ_TIMEOUT_SECS", "1")])).await;
    let videos = VideoServer::start().await;
    let project = stack.project("stall").await;
    let job = stack
        .import(
            &project.token,
            &batch("archive").urls([videos.url("/stall/sample.mp4")]),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    let reason = status["videos"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("the connection broke after")
            && reason.ends_with("(gave up after 3 tries)"),
        "{reason}"
    );
    // First try + one quick retry, for each of the three tries.
    assert_eq!(videos.hits("/stall/sample.mp4"), 6);
    stack.finish().await;
}

#[tokio::test]
async fn an_unchanged_source_is_not_downloaded_again() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("etag").await;
    let url = videos.url("/etag/sample.mp4");
    let with_title =
        |title: &str| batch("archive").video_with(&url, "e", "f", json!({"title": title}));
    let first = stack.import(&project.token, &with_title("a")).await;
    stack.wait_finished(&project.token, &first, 30).await;
    let same = stack.import(&project.token, &with_title("a")).await;
    let same = stack.wait_finished(&project.token, &same, 30).await;
    assert_eq!(same["videos"][0]["state"], "skipped");
    assert_eq!(same["videos"][0]["reason"], "already exists");
    let renamed = stack.import(&project.token, &with_title("b")).await;
    let renamed = stack.wait_finished(&project.token, &renamed, 30).await;
    assert_eq!(renamed["videos"][0]["state"], "imported");
    let (_, entry) = stack
        .get(
            Some(&project.token),
            "/api/v1/mediaLibrary?systemName=archive&externalId=e",
        )
        .await;
    assert_eq!(entry[0]["version"], 2);
    assert_eq!(entry[0]["metadata"]["title"], "b");
    assert_eq!(
        videos.hits("/etag/sample.mp4 200"),
        1,
        "the body was sent once"
    );
    assert_eq!(videos.hits("/etag/sample.mp4 304"), 2);
    stack.finish().await;
}

#[tokio::test]
async fn a_dead_lettered_video_fails_with_the_reason_and_the_job_finishes() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("poison").await;
    // One video that stalls, so that its message is still unacked when the broker sets a
    // copy aside, as it does after the delivery limit.
    let body = batch("archive")
        .urls([
            videos.url("/stall/sample.mp4"),
            videos.url("/videos/sample.mp4"),
        ])
        .webhook(&receiver.url);
    let job = stack.import(&project.token, &body).await;
    stack
        .dead_letter(
            "fetch",
            &json!({"v": 3, "job_id": job, "idx": 0, "attempt": 0, "video": {
                "project_id": 0, "system_name": "", "external_id": "v0",
                "url": videos.url("/stall/sample.mp4"), "file_name": "", "metadata": {}}}),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    assert_eq!(status["state"], "failed");
    let reason = status["videos"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("set aside (dead-lettered) after 20 deliveries"),
        "{reason}"
    );
    assert_eq!(status["videos"][1]["state"], "imported");
    let hooks = receiver.wait_for(1, 30).await;
    assert_eq!(hooks[0].json()["failures"][0]["externalId"], "v0");
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}

#[tokio::test]
async fn a_worker_killed_mid_batch_loses_and_duplicates_nothing() {
    let mut stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("kill9").await;
    // Each download takes about a second (three 1 KiB pieces, 300 ms apart).
    let urls: Vec<String> = (0..40)
        .map(|i| videos.url(&format!("/slow/300/sample.mp4?n={i}")))
        .collect();
    let body = batch("archive").urls(&urls).webhook(&receiver.url);
    let job = stack.import(&project.token, &body).await;
    // Wait until the worker is in the middle of the batch.
    stack
        .poll_until("2 videos imported", Duration::from_secs(15), async || {
            let status = stack.status(&project.token, &job).await;
            match status["overview"]["imported"].as_i64().unwrap() {
                done if done >= 2 => Ok(()),
                done => Err(format!("{done} imported")),
            }
        })
        .await;
    let worker = stack.running(Kind::Worker)[0].clone();
    stack.kill(&worker.name).await;
    let status = stack.status(&project.token, &job).await;
    assert!(
        status["overview"]["pending"].as_i64().unwrap() > 0,
        "the kill came mid-batch"
    );
    stack.spawn_worker().await;
    let status = stack.wait_finished(&project.token, &job, 90).await;
    assert_eq!(status["state"], "success", "{status}");
    assert_eq!(status["overview"]["imported"], 40);
    let rows = stack
        .sql("SELECT count(*), count(DISTINCT external_id) FROM media_entries")
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), 40);
    assert_eq!(rows[0].get::<_, i64>(1), 40);
    receiver.wait_for(1, 30).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 1, "one webhook for the job");
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}

#[tokio::test]
async fn sigterm_lets_in_flight_downloads_finish_and_hands_back_the_rest() {
    let mut stack = Stack::start(env(&[("VIDEO_IMPORT__FETCH__CONCURRENCY", "2")])).await;
    let videos = VideoServer::start().await;
    let project = stack.project("sigterm").await;
    let urls: Vec<String> = (0..10)
        .map(|i| videos.url(&format!("/slow/300/sample.mp4?n={i}")))
        .collect();
    let job = stack
        .import(&project.token, &batch("archive").urls(&urls))
        .await;
    stack
        .poll_until(
            "2 downloads started",
            Duration::from_secs(6),
            async || match videos.hits("/slow/300/sample.mp4") {
                hits if hits >= 2 => Ok(()),
                hits => Err(format!("{hits} requests")),
            },
        )
        .await;
    let worker = stack.running(Kind::Worker)[0].clone();
    let status = stack.terminate(&worker.name).await;
    assert!(status.success(), "the worker exits cleanly: {status}");
    let log = stack.log(&worker.name);
    assert!(log.contains("shutdown requested"), "{log}");
    // The downloads in flight at SIGTERM were finished, not abandoned.
    let done = stack
        .sql("SELECT count(*) FROM job_items WHERE state = 'imported'")
        .await;
    assert!(done[0].get::<_, i64>(0) >= 2, "in-flight videos completed");
    assert!(!log.contains("grace period over"), "{log}");
    stack.spawn_worker().await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["overview"]["imported"], 10);
    stack.finish().await;
}

#[tokio::test]
async fn secrets_never_reach_the_logs_or_read_only_callers() {
    let stack = Stack::start(env(&[("VIDEO_IMPORT__LOG__FILTER", "debug")])).await;
    let videos = VideoServer::start().await;
    let project = stack.project("secrets").await;
    let with_password = videos
        .url("/videos/sample.mp4?sig=SIGNATURE1")
        .replace("http://", "http://archivist:s3cr3tpw@");
    let body = batch("archive")
        .video_with(with_password, "a", "a", json!({}))
        .video_with(
            videos.url("/videos/missing.mp4?sig=SIGNATURE2"),
            "b",
            "b",
            json!({}),
        )
        .video_with(
            "http://127.0.0.1:1/v.mp4?sig=SIGNATURE3",
            "c",
            "c",
            json!({}),
        );
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["videos"][0]["state"], "imported", "{status}");
    for i in [1, 2] {
        assert_eq!(status["videos"][i]["state"], "failed", "{status}");
    }
    let shown = status.to_string();
    assert!(
        !shown.contains("SIGNATURE2") && !shown.contains("SIGNATURE3"),
        "{shown}"
    );
    assert!(!shown.contains("s3cr3tpw"), "{shown}");

    // A read-only caller sees where the file came from, not how to log in there.
    let reader = stack.token(&project.handle, &["public-api:read"]).await;
    let media_id = status["videos"][0]["video"]["mediaId"].as_str().unwrap();
    let (code, entry) = stack
        .get(Some(&reader), &format!("/api/v1/mediaLibrary/{media_id}"))
        .await;
    assert_eq!(code, 200);
    let original = entry["asset"]["originalUrl"].as_str().unwrap();
    assert!(
        !original.contains("s3cr3tpw") && !original.contains("archivist"),
        "{original}"
    );

    let token_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        project.token.as_bytes(),
    ));
    let mut logs = String::new();
    for file in std::fs::read_dir(&stack.dir).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            logs.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    assert!(logs.contains("DEBUG"), "the processes logged at debug");
    for secret in [
        "s3cr3tpw",
        "SIGNATURE1",
        "SIGNATURE2",
        "SIGNATURE3",
        &token_hash,
    ] {
        assert!(!logs.contains(secret), "{secret} is in the logs");
    }
    // A CR LF in an id, which would forge a log line, does not get past the door.
    let forged = batch("archive")
        .video_with(
            videos.url("/videos/sample.mp4"),
            "a\r\nFORGED log line",
            "a",
            json!({}),
        )
        .build();
    let (code, answer) = stack
        .import_raw(Some(&project.token), &forged.to_string())
        .await;
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error_details"]["videos[0].id"]
            .as_str()
            .is_some_and(|m| m.contains("U+000D")),
        "{answer}"
    );
    assert!(!logs.lines().any(|line| line.starts_with("FORGED")));
    stack.finish().await;
}

#[tokio::test]
async fn a_host_that_does_not_exist_fails_after_the_quick_retries() {
    // Retries through the queue would wait a minute: the video must fail without them.
    let stack = Stack::start(env(&[("VIDEO_IMPORT__FETCH__RETRY_DELAYS_SECS", "60,60")])).await;
    let project = stack.project("nxdomain").await;
    let job = stack
        .import(
            &project.token,
            &batch("archive").urls(["http://no-such-host.invalid/video.mp4".to_string()]),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    let reason = status["videos"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("host not found: no-such-host.invalid"),
        "{reason}"
    );
    stack.finish().await;
}

#[tokio::test]
async fn objects_left_by_a_worker_killed_before_its_commit_are_swept() {
    let mut stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("sweep").await;
    let storage = stack.dir.join("videos");
    let job = stack
        .import(
            &project.token,
            &batch("archive").urls([videos.url("/videos/sample.mp4")]),
        )
        .await;
    // Hold the job's row: the worker uploads the video, then waits to count it on the job.
    let locker = hold_jobs(&stack).await;
    stack
        .poll_until(
            "the worker to reach its commit (wait for the lock)",
            Duration::from_secs(15),
            async || {
                let rows = stack
                    .sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
                    .await;
                match rows[0].get::<_, i64>(0) {
                    0 => Err("no session waiting for a lock"),
                    _ => Ok(()),
                }
            },
        )
        .await;
    assert_eq!(files_below(&storage).len(), 1, "the upload is complete");
    let worker = stack.running(Kind::Worker)[0].clone();
    stack.kill(&worker.name).await;
    locker.batch_execute("ROLLBACK").await.unwrap();

    // Another worker imports the video again; the first upload is now referenced by nothing.
    stack.spawn_worker().await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["videos"][0]["state"], "imported", "{status}");
    assert_eq!(
        files_below(&storage).len(),
        2,
        "{:?}",
        files_below(&storage)
    );
    let media_id = status["videos"][0]["video"]["mediaId"].as_str().unwrap();
    let (_, entry) = stack
        .get(
            Some(&project.token),
            &format!("/api/v1/mediaLibrary/{media_id}"),
        )
        .await;
    // Packed (the default), the entry names a range of a pack file: the pack is what is
    // stored, and what an entry's range keeps.
    let key = entry["asset"]["key"].as_str().unwrap();
    let key = video_import_shared::storage::Location::of(key)
        .object()
        .to_string();
    assert!(key.starts_with("packs/"), "{key}");

    // A dry run counts (an incomplete upload's part too) and removes nothing; a young
    // orphan is kept; with no grace the orphan and the part go.
    let part = storage.join(format!("{key}#3"));
    std::fs::write(&part, b"").unwrap();
    let dry = stack
        .api_cli(&["storage", "sweep", "--grace-secs", "0", "--dry-run"])
        .await;
    assert!(dry.status.success(), "{}", dry.stderr);
    let report: Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(report["unreferenced"], 1, "{report}");
    assert_eq!(report["staleParts"], 1, "{report}");
    assert_eq!(files_below(&storage).len(), 3);
    assert!(part.exists(), "a dry run removed the part");
    let young = stack.api_cli(&["storage", "sweep"]).await;
    let report: Value = serde_json::from_str(&young.stdout).unwrap();
    assert_eq!(report["checked"], 0, "nothing is a day old: {report}");
    let swept = stack
        .api_cli(&["storage", "sweep", "--grace-secs", "0"])
        .await;
    assert!(swept.status.success(), "{}", swept.stderr);
    let report: Value = serde_json::from_str(&swept.stdout).unwrap();
    assert_eq!(report["unreferenced"], 1, "{report}");
    assert_eq!(report["staleParts"], 1, "{report}");
    assert_eq!(files_below(&storage), std::slice::from_ref(&key));

    // A worker configured to sweep does it by itself, incomplete local uploads included.
    std::fs::write(storage.join("orphan.mp4"), b"left behind").unwrap();
    std::fs::write(storage.join(format!("{key}#7")), b"").unwrap();
    let port = video_import_tests::free_port().to_string();
    stack
        .spawn(
            "sweeper",
            "video-import-worker",
            &[],
            &[
                (
                    "VIDEO_IMPORT__METRICS__LISTEN",
                    &format!("127.0.0.1:{port}"),
                ),
                ("VIDEO_IMPORT__STORAGE__SWEEP_INTERVAL_SECS", "1"),
                ("VIDEO_IMPORT__STORAGE__SWEEP_GRACE_SECS", "0"),
            ],
        )
        .await;
    let left = stack
        .poll_until(
            "the sweeper to leave one file",
            Duration::from_secs(10),
            async || match files_below(&storage) {
                files if files.len() == 1 => Ok(files),
                files => Err(format!("{files:?}")),
            },
        )
        .await;
    assert_eq!(left, [key], "{}", stack.log("sweeper"));
    stack.finish().await;
}

#[tokio::test]
async fn workers_sweep_once_per_interval_between_them() {
    use video_import_shared::config::{Settings, StorageSettings};
    use video_import_shared::storage::Storage;
    use video_import_shared::sweep;
    let stack = Stack::start(Options::default()).await;
    let root = stack.dir.join("videos");
    let storage = Storage::open(&StorageSettings {
        root: root.display().to_string(),
        ..Settings::default().storage
    })
    .await
    .unwrap();
    let pool = stack.pool().await;
    let orphan = |name: &str| {
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join(name), b"left behind").unwrap();
    };
    let (grace, hour) = (Duration::ZERO, Duration::from_secs(3600));

    // Never swept: due. Swept a moment ago (by a worker or by the command): not due for an
    // hour, whoever asks; due again for an interval shorter than the time since.
    orphan("first.mp4");
    let first = sweep::sweep_if_due(&storage, &pool, grace, hour).await;
    assert_eq!(first.unwrap().map(|r| r.unreferenced), Some(1));
    orphan("second.mp4");
    let again = sweep::sweep_if_due(&storage, &pool, grace, hour).await;
    assert_eq!(again.unwrap(), None, "another worker swept a moment ago");
    assert!(root.join("second.mp4").exists());
    let command = sweep::sweep(&storage, &pool, grace, false).await.unwrap();
    assert_eq!(
        command.map(|r| r.unreferenced),
        Some(1),
        "the command always sweeps"
    );
    orphan("third.mp4");
    let later = sweep::sweep_if_due(&storage, &pool, grace, hour).await;
    assert_eq!(later.unwrap(), None, "the command's sweep counts too");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let due = sweep::sweep_if_due(&storage, &pool, grace, Duration::from_secs(1)).await;
    assert_eq!(due.unwrap().map(|r| r.unreferenced), Some(1));
    // A dry run is not a sweep: a second after the last one, with a dry run just now, a
    // sweep is due.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let dry = sweep::sweep(&storage, &pool, grace, true).await.unwrap();
    assert!(dry.is_some());
    orphan("fourth.mp4");
    let due = sweep::sweep_if_due(&storage, &pool, grace, Duration::from_secs(1)).await;
    assert_eq!(due.unwrap().map(|r| r.unreferenced), Some(1));
    stack.finish().await;
}

/// A packed entry: its externalId, offset and length in its pack.
type PackedEntry = (String, u64, u64);

/// The stored layout: each pack's entries, by pack.
async fn packs_of(stack: &Stack) -> std::collections::BTreeMap<String, Vec<PackedEntry>> {
    use video_import_shared::storage::Location;
    let mut packs = std::collections::BTreeMap::<String, Vec<_>>::new();
    for row in stack
        .sql("SELECT external_id, asset_key FROM media_entries ORDER BY asset_key")
        .await
    {
        let key: String = row.get(1);
        let Location::Packed { pack, offset, len } = Location::of(&key) else {
            panic!("{key} is not packed");
        };
        packs
            .entry(pack.to_string())
            .or_default()
            .push((row.get(0), offset, len));
    }
    packs
}

#[tokio::test]
async fn a_sweep_moves_the_videos_still_used_out_of_mostly_unused_packs() {
    // One group writer: the videos that finish while a pack is written share the next one.
    let stack = Stack::start(env(&[("VIDEO_IMPORT__STORAGE__SYNC_WRITERS", "1")])).await;
    let videos = VideoServer::start().await;
    let project = stack.project("repack").await;
    let storage = stack.dir.join("videos");
    let padded = |n: usize| videos.url(&format!("/padded/{n}/sample.mp4"));
    let mut first = batch("archive");
    for i in 0..24 {
        first = first.video(padded(i), format!("v{i}"));
    }
    let job = stack.import(&project.token, &first).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["overview"]["imported"], 24, "{status}");

    // In every pack of several videos, all but its smallest are imported again with other
    // bytes: the pack keeps one video in use and its neighbours' bytes unused.
    let before = packs_of(&stack).await;
    let shared: Vec<(&String, &Vec<PackedEntry>)> =
        before.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        !shared.is_empty(),
        "24 videos finishing at once share no pack: {before:?}"
    );
    let mut replace = batch("archive");
    let mut kept = Vec::new();
    let mut unused_bytes = 0;
    for (pack, entries) in &shared {
        let smallest = entries.iter().min_by_key(|(_, _, len)| *len).unwrap();
        kept.push(smallest.0.clone());
        for (id, _, len) in entries.iter().filter(|e| e.0 != smallest.0) {
            let n: usize = id[1..].parse().unwrap();
            replace = replace.video(padded(n + 100), id.clone());
            unused_bytes += len;
        }
        let size = std::fs::metadata(storage.join(pack)).unwrap().len();
        assert_eq!(size, entries.iter().map(|e| e.2).sum::<u64>());
    }
    let job = stack.import(&project.token, &replace).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["state"], "success", "{status}");
    assert!(status["videos"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["state"] == "imported"));

    // What the kept videos are, read through the API, before anything moves.
    let read = async |id: &str| {
        let rows = stack
            .sql(&format!(
                "SELECT id, version, asset_key FROM media_entries WHERE external_id = '{id}'"
            ))
            .await;
        let (media_id, version, key): (String, i32, String) =
            (rows[0].get(0), rows[0].get(1), rows[0].get(2));
        let response = stack
            .http
            .get(format!(
                "{}/api/v1/mediaLibrary/{media_id}/asset",
                stack.api_url
            ))
            .bearer_auth(&project.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{id}");
        (version, key, response.bytes().await.unwrap().to_vec())
    };
    let mut kept_before = Vec::new();
    for id in &kept {
        kept_before.push(read(id).await);
    }

    // Everything stored two days ago: older than the sweeper's grace period (a day).
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    for file in files_below(&storage) {
        let open = std::fs::File::options()
            .write(true)
            .open(storage.join(&file));
        open.unwrap().set_modified(two_days_ago).unwrap();
    }

    // A dry run counts the packs to rewrite and the bytes that would come back; nothing moves.
    let files_before = files_below(&storage);
    let dry = stack.api_cli(&["storage", "sweep", "--dry-run"]).await;
    assert!(dry.status.success(), "{}", dry.stderr);
    let report: Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(report["repacked"], shared.len(), "{report}");
    assert_eq!(report["reclaimableBytes"], unused_bytes, "{report}");
    assert_eq!(report["moved"], 0, "{report}");
    assert_eq!(report["unreferenced"], 0, "{report}");
    assert_eq!(files_below(&storage), files_before);

    // The sweep moves each kept video into one new pack; its entry names it there, with
    // the same bytes and the same version.
    let swept = stack.api_cli(&["storage", "sweep"]).await;
    assert!(swept.status.success(), "{}", swept.stderr);
    let report: Value = serde_json::from_str(&swept.stdout).unwrap();
    assert_eq!(report["repacked"], shared.len(), "{report}");
    assert_eq!(report["moved"], kept.len(), "{report}");
    let mut new_packs = std::collections::BTreeSet::new();
    for (id, (version, key, bytes)) in kept.iter().zip(&kept_before) {
        let (version_now, key_now, bytes_now) = read(id).await;
        assert_eq!(&bytes_now, bytes, "{id} reads back the same");
        assert_eq!(version_now, *version, "{id}: a move is not a new version");
        assert_ne!(&key_now, key, "{id} moved");
        new_packs.insert(
            video_import_shared::storage::Location::of(&key_now)
                .object()
                .to_string(),
        );
    }
    assert_eq!(new_packs.len(), 1, "{new_packs:?}");

    // The old packs are kept for another grace period (a read that had looked up the old
    // place, a database restored to before the move), then removed: what is stored is then
    // exactly what entries use.
    let swept = stack.api_cli(&["storage", "sweep"]).await;
    let report: Value = serde_json::from_str(&swept.stdout).unwrap();
    assert_eq!(report["unreferenced"], 0, "{report}");
    for (pack, _) in &shared {
        assert!(storage.join(pack).exists(), "{pack} is kept for now");
    }
    let swept = stack
        .api_cli(&["storage", "sweep", "--grace-secs", "0"])
        .await;
    let report: Value = serde_json::from_str(&swept.stdout).unwrap();
    assert_eq!(report["unreferenced"], shared.len(), "{report}");
    assert_eq!(report["repacked"], 0, "{report}");
    let stored: u64 = files_below(&storage)
        .iter()
        .map(|f| std::fs::metadata(storage.join(f)).unwrap().len())
        .sum();
    let used = stack
        .sql("SELECT sum(asset_size)::int8 FROM media_entries")
        .await;
    assert_eq!(stored, used[0].get::<_, i64>(0) as u64);
    for (id, (_, _, bytes)) in kept.iter().zip(&kept_before) {
        assert_eq!(&read(id).await.2, bytes, "{id} reads back after the sweep");
    }

    // A move whose entry's key changed after the sweeper read it (an import replaced the
    // video meanwhile) leaves the entry as the import left it.
    let pool = stack.pool().await;
    let client = pool.get().await.unwrap();
    let (_, key_now, _) = read(&kept[0]).await;
    let rows = stack
        .sql(&format!(
            "SELECT id, asset_size, sha256 FROM media_entries WHERE external_id = '{}'",
            kept[0]
        ))
        .await;
    let stale = entries::PackedAsset {
        entry_id: rows[0].get(0),
        key: kept_before[0].1.clone(),
        size: rows[0].get(1),
        sha256: rows[0].get(2),
    };
    let elsewhere = "packs/elsewhere.pack@0+1".to_string();
    let moved = entries::move_assets(&client, &[(stale, elsewhere)])
        .await
        .unwrap();
    assert_eq!(moved, 0);
    assert_eq!(read(&kept[0]).await.1, key_now);
    stack.finish().await;
}

#[tokio::test]
async fn downloads_from_one_host_are_bounded_per_worker() {
    let stack = Stack::start(env(&[
        ("VIDEO_IMPORT__FETCH__CONCURRENCY", "16"),
        ("VIDEO_IMPORT__FETCH__PER_HOST_CONCURRENCY", "3"),
    ]))
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("polite").await;
    let urls: Vec<String> = (0..12)
        .map(|i| videos.url(&format!("/slow/100/sample.mp4?n={i}")))
        .collect();
    let job = stack
        .import(&project.token, &batch("archive").urls(&urls))
        .await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["overview"]["imported"], 12, "{status}");
    let most = videos.max_in_flight();
    assert!(
        (2..=3).contains(&most),
        "{most} downloads from one host at once"
    );
    stack.finish().await;
}

#[tokio::test]
async fn a_hosts_slot_is_given_back_when_the_download_ends_not_when_it_is_recorded() {
    // One slot for the host: while the database holds the job's row (recording waits for it),
    // the next videos of the host are downloaded all the same, one at a time.
    downloads_go_on_while_recording_waits(("VIDEO_IMPORT__FETCH__PER_HOST_CONCURRENCY", "1"), 3)
        .await;
}

#[tokio::test]
async fn a_download_slot_is_given_back_when_the_download_ends_not_when_it_is_recorded() {
    // One download slot: while the database holds the job's row (recording waits for it),
    // the worker goes on to download the next video. (Two videos: a worker of one slot keeps
    // two ready in the queue, so both are handed out before the row is held.)
    downloads_go_on_while_recording_waits(("VIDEO_IMPORT__FETCH__CONCURRENCY", "1"), 2).await;
}

/// With `one_slot` (a setting that allows one download at a time), imports `count` slow
/// videos while the job's row is held: every video is downloaded, one at a time, before any
/// is recorded, and all are imported once the row is let go.
async fn downloads_go_on_while_recording_waits(one_slot: (&str, &str), count: usize) {
    let stack = Stack::start(env(&[one_slot])).await;
    let videos = VideoServer::start().await;
    let project = stack.project("handover").await;
    let urls: Vec<String> = (0..count)
        .map(|i| videos.url(&format!("/slow/150/sample.mp4?n={i}")))
        .collect();
    let job = stack
        .import(&project.token, &batch("archive").urls(&urls))
        .await;
    let locker = hold_jobs(&stack).await;
    let complete = || {
        videos
            .counts()
            .keys()
            .filter(|label| label.ends_with(" complete"))
            .count()
    };
    stack
        .poll_until(
            "every video downloaded while recording waits for the job's row",
            Duration::from_secs(30),
            async || match complete() {
                done if done == count => Ok(()),
                done => Err(format!("{done} of {count} downloaded")),
            },
        )
        .await;
    let status = stack.status(&project.token, &job).await;
    assert!(
        status["overview"]["imported"].as_i64().unwrap_or(0) < count as i64,
        "recorded while the job's row was held: {status}"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["overview"]["imported"], count, "{status}");
    assert_eq!(videos.max_in_flight(), 1, "one download at a time");
    stack.finish().await;
}

#[tokio::test]
async fn messages_of_one_video_fill_every_download_slot_and_no_more() {
    // 4 slots and 4 videos to a message: the worker holds 2 messages, enough for its slots
    // twice over when they are full. Videos that come one to a message (here a trickle of
    // one-video jobs; retries and split messages alike) are taken beyond those 2 while its
    // slots would idle, and no further: the rest stay in the queue for other workers.
    let stack = Stack::start(env(&[
        ("VIDEO_IMPORT__FETCH__CONCURRENCY", "4"),
        ("VIDEO_IMPORT__FETCH__VIDEOS_PER_MESSAGE", "4"),
        // The sources stall for a minute: no read times out (and is tried again) meanwhile.
        ("VIDEO_IMPORT__FETCH__READ_TIMEOUT_SECS", "300"),
    ]))
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("trickle").await;
    let stalling = || videos.hits("/stall/sample.mp4");
    // One job at a time, so that each is handed out in a message of its own (two in one
    // round would go out in one message).
    let import_alone = async |n: u32| {
        let url = videos.url(&format!("/stall/sample.mp4?n={n}"));
        stack
            .import(&project.token, &batch("archive").urls([url]))
            .await;
    };
    for n in 1..=4u32 {
        import_alone(n).await;
        stack
            .poll_until(
                &format!("{n} downloads at once, one video to a message"),
                Duration::from_secs(30),
                async || match stalling() {
                    hits if hits >= n => Ok(()),
                    hits => Err(format!("{hits} downloads")),
                },
            )
            .await;
    }
    let held_and_ready = async |ready: u32| {
        let held = stack.over_workers("video_import_videos_held").await;
        match (held, stack.ready(queue::FETCH).await) {
            (4.0, r) if r == ready => Ok(()),
            other => Err(format!("(held, ready) = {other:?}")),
        }
    };
    for (n, ready) in [(5, 1), (6, 2)] {
        import_alone(n).await;
        stack
            .poll_until(
                &format!("{ready} videos without a slot left in the queue"),
                Duration::from_secs(30),
                async || held_and_ready(ready).await,
            )
            .await;
    }
    // Still so after many looks for room (one each 20 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    held_and_ready(2).await.unwrap();
    assert_eq!(stalling(), 4, "{:?}", videos.counts());
    stack.finish().await;
}

#[tokio::test]
async fn a_host_that_asks_for_a_pause_gets_it_from_every_queued_video() {
    let stack = Stack::start(env(&[
        ("VIDEO_IMPORT__FETCH__PER_HOST_CONCURRENCY", "2"),
        ("VIDEO_IMPORT__FETCH__RETRY_DELAYS_SECS", "1,5"),
    ]))
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("pause").await;
    let urls: Vec<String> = (0..4)
        .map(|i| videos.url(&format!("/busy/3/sample.mp4?n={i}")))
        .collect();
    let job = stack
        .import(&project.token, &batch("archive").urls(&urls))
        .await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["overview"]["imported"], 4, "{status}");
    let mut arrivals = videos.arrivals();
    arrivals.sort();
    // The first two came together; the first was told to come back in 3 s. The next video
    // had a free slot after 300 ms, and waited for the host's pause all the same.
    assert!(arrivals.len() >= 5, "{} requests", arrivals.len());
    let third = arrivals[2] - arrivals[0];
    assert!(
        third >= Duration::from_millis(2500),
        "the third request came after {third:?}"
    );
    stack.finish().await;
}

#[tokio::test]
async fn a_small_batch_does_not_wait_behind_another_backlog() {
    // One worker with 8 slots and sources that take 300 ms: 2,000 queued videos are over a
    // minute of work, so a first-in first-out queue would hold the small batches that long.
    let stack = Stack::start(env(&[("VIDEO_IMPORT__FETCH__CONCURRENCY", "8")])).await;
    let videos = VideoServer::start().await;
    let big = stack.project("archive-a").await;
    let small = stack.project("newsroom-b").await;
    let slow = |prefix: &str, n: usize| {
        (0..n).fold(batch("archive"), |batch, i| {
            let url = videos.url(&format!("/slow/100/sample.mp4?{prefix}{i}"));
            batch.video(url, format!("{prefix}{i}"))
        })
    };
    let backlog = [
        stack.import(&big.token, &slow("a", 1000)).await,
        stack.import(&big.token, &slow("b", 1000)).await,
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let posted = std::time::Instant::now();
    let other_project = stack.import(&small.token, &slow("c", 5)).await;
    let same_project = stack.import(&big.token, &slow("d", 5)).await;
    let b = stack.wait_finished(&small.token, &other_project, 60).await;
    let a2 = stack.wait_finished(&big.token, &same_project, 60).await;
    let waited = posted.elapsed();
    assert_eq!(b["overview"]["imported"], 5, "{b}");
    assert_eq!(a2["overview"]["imported"], 5, "{a2}");
    // Both finished while the backlog was still far from done.
    let mut pending = 0;
    for job in &backlog {
        pending += stack.status(&big.token, job).await["overview"]["pending"]
            .as_i64()
            .unwrap();
    }
    assert!(
        pending > 1500,
        "the small batches finished only after {waited:?}, with {pending} of the backlog pending"
    );
    stack.finish().await;
}

/// A presigned URL (its signature in the query) is fetched as it is: one GET, no `HEAD`
/// first, no `Authorization` added, and its signature never reaches a log line.
#[tokio::test]
async fn a_presigned_url_is_fetched_with_one_plain_get_and_its_signature_is_never_logged() {
    let stack = Stack::start(Options {
        env: vec![(
            "VIDEO_IMPORT__LOG__FILTER".into(),
            "debug,lapin=info,tokio_postgres=info,hyper_util=info,reqwest=info,h2=info".into(),
        )],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("presigned").await;
    let signature = "5f1c0ffee0ddba11sig";
    let url = videos.url(&format!(
        "/presigned/sample.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=300&X-Amz-Signature={signature}"
    ));
    let job = stack
        .import(&project.token, &batch("archive").video(url, "p"))
        .await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    assert_eq!(status["videos"][0]["status"], "success", "{status}");
    assert_eq!(videos.hits("/presigned/sample.mp4"), 1, "one GET");
    assert_eq!(videos.hits("/presigned/sample.mp4 HEAD"), 0, "no HEAD");
    assert_eq!(
        videos.hits("/presigned/sample.mp4 refused"),
        0,
        "no Authorization"
    );
    for name in ["api", "worker0", "notifier0"] {
        assert!(
            !stack.log(name).contains(signature),
            "the signature is in {name}'s log"
        );
    }
    stack.finish().await;
}

/// Fixity: each checksum given is checked against what is stored; a mismatch is tried once
/// more, then fails with both values named, and nothing of it is kept.
#[tokio::test]
async fn checksums_are_verified_and_a_mismatch_fails_with_nothing_kept() {
    use md5::{Digest, Md5};
    // A file each: what is kept is counted in files.
    let stack = Stack::start(Options::with_env(&[A_FILE_EACH])).await;
    let videos = VideoServer::start().await;
    let project = stack.project("fixity").await;
    let bytes = fixture("sample.mp4");
    let sha = sha256(&bytes);
    let md5 = hex::encode(Md5::digest(&bytes));
    let wrong = "0".repeat(64);
    let body = json!({"systemName": "archive", "videos": [
        {"url": videos.url("/videos/sample.mp4?a"), "id": "by-sha", "fileName": "a", "metadata": {},
         "checksum": {"sha256": sha.to_uppercase()}},
        {"url": videos.url("/videos/sample.mp4?b"), "id": "by-md5", "fileName": "b", "metadata": {},
         "checksum": {"md5": md5}},
        {"url": videos.url("/videos/sample.mp4?c"), "id": "wrong", "fileName": "c", "metadata": {},
         "checksum": {"sha256": wrong, "md5": md5}},
    ]});
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    let videos_shown = status["videos"].as_array().unwrap();
    assert_eq!(videos_shown[0]["status"], "success", "{status}");
    assert_eq!(videos_shown[0]["video"]["verified"]["sha256"], sha.as_str());
    assert_eq!(videos_shown[0]["video"]["md5"], md5.as_str());
    assert_eq!(videos_shown[1]["status"], "success", "{status}");
    assert_eq!(videos_shown[1]["video"]["verified"]["md5"], md5.as_str());
    assert_eq!(videos_shown[2]["status"], "failed");
    assert_eq!(
        videos_shown[2]["reason"],
        format!("checksum mismatch: expected sha256 {wrong}, got {sha}")
    );
    assert_eq!(
        videos.hits("/videos/sample.mp4"),
        4,
        "the mismatched video was tried twice, the others once"
    );
    let stored = files_below(&stack.dir.join("videos"));
    assert_eq!(stored.len(), 2, "nothing kept of the mismatch: {stored:?}");
    let media_id = videos_shown[0]["video"]["mediaId"].as_str().unwrap();
    let (_, entry) = stack
        .get(
            Some(&project.token),
            &format!("/api/v1/mediaLibrary/{media_id}"),
        )
        .await;
    assert_eq!(entry["asset"]["md5"], md5.as_str());

    // The same video again with the same checksum: skipped without a download.
    let again = json!({"systemName": "archive", "videos": [
        {"url": videos.url("/videos/sample.mp4?a"), "id": "by-sha", "fileName": "a", "metadata": {},
         "checksum": {"sha256": sha, "md5": md5}}]});
    let job = stack.import(&project.token, &again).await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    assert_eq!(status["videos"][0]["status"], "skipped", "{status}");
    assert_eq!(status["videos"][0]["video"]["mediaId"], media_id);
    assert_eq!(videos.hits("/videos/sample.mp4"), 4, "no download");

    // A malformed checksum is refused at the door, naming the field.
    let bad = json!({"systemName": "archive", "videos": [
        {"url": videos.url("/videos/sample.mp4"), "id": "x", "fileName": "x", "metadata": {},
         "checksum": {"sha256": "abc"}}]});
    let (code, error) = stack
        .import_raw(Some(&project.token), &bad.to_string())
        .await;
    assert_eq!(code, 400);
    assert_eq!(
        error["error_details"]["videos[0].checksum.sha256"],
        "must be 64 hexadecimal digits"
    );
    stack.finish().await;
}

/// Locks every job's row in an open transaction, so that a worker can download but not
/// count a video on its job; the lock goes with the returned client.
async fn hold_jobs(stack: &Stack) -> tokio_postgres::Client {
    let (locker, connection) = tokio_postgres::connect(&stack.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; SELECT 1 FROM jobs FOR UPDATE")
        .await
        .unwrap();
    locker
}
