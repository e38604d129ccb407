//! Stored files checked again: `storage verify` re-reads every stored object (local and S3
//! storage) against its entry's size and hashes, reports what is missing or changed, exits
//! with code 3 and marks those entries, so that their next import downloads them again
//! (no conditional request, no "already exists", no checksum-match skip) while the intact
//! ones are still skipped. A worker with `storage.verify_rate_mib` does the same
//! continuously, one worker at a time, continuing where the last one got to.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use video_import_tests::services::OwnS3;
use video_import_tests::videos::{fixture, sha256, VideoServer};
use video_import_tests::{batch, stored_at, stored_bytes, Options, Stack, A_FILE_EACH};

/// Each entry by externalId: (entry id, asset key, size).
async fn entries(stack: &Stack) -> BTreeMap<String, (String, String, i64)> {
    stack
        .sql("SELECT external_id, id, asset_key, asset_size FROM media_entries")
        .await
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect()
}

/// The externalIds of the entries marked damaged, with their damage kind.
async fn marked(stack: &Stack) -> BTreeMap<String, String> {
    stack
        .sql("SELECT external_id, damage_kind FROM media_entries WHERE damaged_at IS NOT NULL")
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Runs `storage verify ARGS`: its exit code, its JSON report (`Null` when it printed none)
/// and its stderr.
async fn verify(stack: &Stack, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["storage", "verify"];
    all.extend_from_slice(args);
    let out = stack.api_cli(&all).await;
    let report = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), report, out.stderr)
}

/// The report's bad entries by externalId.
fn bad_by_id(report: &Value) -> BTreeMap<String, Value> {
    report["bad"]
        .as_array()
        .expect("a list of bad entries")
        .iter()
        .map(|b| (b["externalId"].as_str().unwrap().to_string(), b.clone()))
        .collect()
}

/// Each video's state in a job's status, by externalId.
fn states(status: &Value) -> BTreeMap<String, String> {
    status["videos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["externalId"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The value of one series (`name` or `name{labels}`) in a /metrics text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Five videos, each fetched its own way: `gone`, `short` and `flipped` are damaged by the
/// test; `kept-etag` (a source with an ETag) and `kept-sum` (a checksum) stay whole.
fn library(videos: &VideoServer) -> Value {
    let mut body = batch("archive")
        .video(videos.url("/etag/sample.mp4"), "gone")
        .video(videos.url("/videos/other.mp4"), "short")
        .video(videos.url("/videos/sample.webm"), "flipped")
        .video(videos.url("/etag/sample.webm"), "kept-etag")
        .video(videos.url("/videos/bench16k.mp4"), "kept-sum")
        .build();
    body["videos"][1]["checksum"] = json!({"sha256": sha256(&fixture("other.mp4"))});
    body["videos"][4]["checksum"] = json!({"sha256": sha256(&fixture("bench16k.mp4"))});
    body
}

/// Flips the byte in the middle of `path` (its size stays); returns the bytes now there.
fn flip_a_byte(path: &std::path::Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).expect("the stored file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, &bytes).expect("write the stored file");
    bytes
}

/// Packed (the default), each video is checked by its own range of its pack: a byte changed
/// in one video's range damages that video only, and a pack removed every video in it; the
/// next import downloads exactly those again.
#[tokio::test]
async fn packed_videos_are_checked_by_their_own_range_of_their_pack() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("packed").await;
    let body = library(&videos);
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["overview"]["imported"], 5, "{status}");
    let before = entries(&stack).await;
    let root = stack.dir.join("videos");
    for (id, (_, key, size)) in &before {
        assert!(key.starts_with("packs/"), "{id}: {key}");
        assert_eq!(
            stored_bytes(&root, key).unwrap().len() as i64,
            *size,
            "{id}"
        );
    }

    // One byte changed in the middle of `flipped`'s range: that video alone is damaged.
    let (pack, range) = stored_at(&root, &before["flipped"].1);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(range.start + (range.end - range.start) / 2) as usize] ^= 0xff;
    std::fs::write(&pack, &bytes).unwrap();
    let (code, report, stderr) = verify(&stack, &[]).await;
    assert_eq!(code, 3, "damage found: {report} {stderr}");
    assert_eq!(
        (&report["ok"], &report["wrongHash"]),
        (&json!(4), &json!(1)),
        "{report}"
    );
    assert_eq!(
        bad_by_id(&report).into_keys().collect::<Vec<_>>(),
        ["flipped"],
        "{report}"
    );

    // `gone`'s pack removed: every video it held is missing (and `flipped`, if elsewhere,
    // still has the wrong hash).
    let (gone_pack, _) = stored_at(&root, &before["gone"].1);
    let expected: BTreeMap<String, String> = before
        .iter()
        .filter_map(|(id, (_, key, _))| {
            if stored_at(&root, key).0 == gone_pack {
                Some((id.clone(), "missing".to_string()))
            } else {
                (id == "flipped").then(|| (id.clone(), "wrong_hash".to_string()))
            }
        })
        .collect();
    std::fs::remove_file(&gone_pack).unwrap();
    let (code, report, stderr) = verify(&stack, &[]).await;
    assert_eq!(code, 3, "damage found: {report} {stderr}");
    assert_eq!(marked(&stack).await, expected, "{report}");

    // The next import downloads exactly the damaged ones again, and all is whole.
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    let imported = states(&status)
        .into_iter()
        .filter(|(_, state)| state == "imported")
        .map(|(id, _)| id)
        .collect::<Vec<_>>();
    assert_eq!(
        imported,
        expected.keys().cloned().collect::<Vec<_>>(),
        "{status}"
    );
    let (code, report, stderr) = verify(&stack, &[]).await;
    assert_eq!((code, &report["ok"]), (0, &json!(5)), "{report} {stderr}");
    stack.finish().await;
}

#[tokio::test]
async fn storage_verify_finds_damaged_files_and_the_next_import_downloads_only_those_again() {
    let stack = Stack::start(Options::with_env(&[A_FILE_EACH])).await;
    let videos = VideoServer::start().await;
    let project = stack.project("verify").await;
    stack.project("empty").await;
    let body = library(&videos);
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["overview"]["imported"], 5, "{status}");
    let (code, report, stderr) = verify(&stack, &[]).await;
    assert_eq!(code, 0, "all whole: {report} {stderr}");
    assert_eq!(report["checked"], 5);
    assert_eq!(report["ok"], 5);
    let whole_bytes: u64 = [
        "sample.mp4",
        "other.mp4",
        "sample.webm",
        "sample.webm",
        "bench16k.mp4",
    ]
    .iter()
    .map(|f| fixture(f).len() as u64)
    .sum();
    assert_eq!(report["bytes"], whole_bytes, "every byte read: {report}");

    // One file deleted, one truncated, one with a byte changed.
    let before = entries(&stack).await;
    let root = stack.dir.join("videos");
    std::fs::remove_file(root.join(&before["gone"].1)).unwrap();
    let short = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join(&before["short"].1))
        .unwrap();
    short.set_len(1000).unwrap();
    drop(short);
    let flipped = flip_a_byte(&root.join(&before["flipped"].1));

    let (code, report, stderr) = verify(&stack, &[]).await;
    assert_eq!(code, 3, "damage found: {report} {stderr}");
    assert!(
        stderr.contains("3 of 5 stored objects are missing, changed or unreadable"),
        "{stderr}"
    );
    for (field, count) in [
        ("checked", 5),
        ("ok", 2),
        ("missing", 1),
        ("wrongSize", 1),
        ("wrongHash", 1),
        ("unreadable", 0),
        ("cleared", 0),
        ("changed", 0),
        ("notListed", 0),
    ] {
        assert_eq!(report[field], count, "{field}: {report}");
    }
    let bad = bad_by_id(&report);
    assert_eq!(
        bad.keys().collect::<Vec<_>>(),
        ["flipped", "gone", "short"],
        "{report}"
    );
    assert_eq!(
        bad["gone"],
        json!({
            "entryId": before["gone"].0, "project": "verify", "systemName": "archive",
            "externalId": "gone", "key": before["gone"].1,
            "problem": "missing", "expectedSize": 2815,
            "reason": "missing: no stored object at the entry's key (expected 2815 bytes)"
        })
    );
    assert_eq!(bad["short"]["problem"], "wrongSize");
    assert_eq!(bad["short"]["expected"], 2977);
    assert_eq!(bad["short"]["found"], 1000);
    assert_eq!(
        bad["short"]["reason"],
        "wrong size: expected 2977 bytes, found 1000"
    );
    assert_eq!(bad["flipped"]["problem"], "wrongHash");
    assert_eq!(bad["flipped"]["algorithm"], "sha256");
    assert_eq!(bad["flipped"]["expected"], sha256(&fixture("sample.webm")));
    assert_eq!(bad["flipped"]["found"], sha256(&flipped));
    assert_eq!(
        marked(&stack).await,
        BTreeMap::from([
            ("flipped".into(), "wrong_hash".into()),
            ("gone".into(), "missing".into()),
            ("short".into(), "wrong_size".into()),
        ])
    );
    // The entry says so.
    let (code, entry) = stack
        .get(
            Some(&project.token),
            &format!("/api/v1/mediaLibrary/{}", before["short"].0),
        )
        .await;
    assert_eq!(code, 200, "{entry}");
    assert_eq!(entry["asset"]["damaged"]["kind"], "wrong_size", "{entry}");
    assert_eq!(
        entry["asset"]["damaged"]["reason"],
        "wrong size: expected 2977 bytes, found 1000"
    );
    let (_, whole) = stack
        .get(
            Some(&project.token),
            &format!("/api/v1/mediaLibrary/{}", before["kept-sum"].0),
        )
        .await;
    assert!(whole["asset"].get("damaged").is_none(), "{whole}");
    // The OpenAPI document describes it.
    let (_, doc) = stack.get(None, "/api/v1/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    assert!(
        schemas["Asset"]["properties"]["damaged"].is_object(),
        "{}",
        schemas["Asset"]
    );
    assert!(
        schemas["AssetDamage"]["properties"]["kind"].is_object(),
        "{schemas}"
    );

    // A sample checks that many entries; another project's entries are not checked.
    let (code, sample, _) = verify(&stack, &["--sample", "2", "--rate", "50"]).await;
    assert_eq!(sample["checked"], 2, "{sample}");
    let sampled_bad = sample["missing"].as_u64().unwrap()
        + sample["wrongSize"].as_u64().unwrap()
        + sample["wrongHash"].as_u64().unwrap();
    assert_eq!(code, if sampled_bad > 0 { 3 } else { 0 }, "{sample}");
    let (code, empty, _) = verify(&stack, &["--project", "empty"]).await;
    assert_eq!((code, &empty["checked"]), (0, &json!(0)), "{empty}");
    let (code, mine, _) = verify(&stack, &["--project", "verify"]).await;
    assert_eq!((code, &mine["checked"]), (3, &json!(5)), "{mine}");
    // Bad options are named, all at once.
    let (code, _, stderr) = verify(&stack, &["--sample", "0", "--rate", "0"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--sample must be at least 1") && stderr.contains("--rate 0"),
        "{stderr}"
    );
    let (code, _, stderr) = verify(&stack, &["--project", "nope"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no project \"nope\""), "{stderr}");

    // The same batch again: the three damaged videos are downloaded again, whatever the
    // source's validators, their unchanged bytes or their checksums say; the two intact
    // ones are skipped as before (a 304; a checksum naming the stored file).
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(
        states(&status),
        BTreeMap::from([
            ("flipped".into(), "imported".into()),
            ("gone".into(), "imported".into()),
            ("kept-etag".into(), "skipped".into()),
            ("kept-sum".into(), "skipped".into()),
            ("short".into(), "imported".into()),
        ]),
        "{status}"
    );
    assert_eq!(
        videos.hits("/etag/sample.mp4 200"),
        2,
        "{:?}",
        videos.counts()
    );
    assert_eq!(videos.hits("/etag/sample.mp4 304"), 0);
    assert_eq!(videos.hits("/videos/other.mp4"), 2);
    assert_eq!(videos.hits("/videos/sample.webm"), 2);
    assert_eq!(videos.hits("/etag/sample.webm 200"), 1);
    assert_eq!(videos.hits("/etag/sample.webm 304"), 1);
    assert_eq!(videos.hits("/videos/bench16k.mp4"), 1);
    let after = entries(&stack).await;
    for id in ["gone", "short", "flipped"] {
        assert_ne!(after[id].1, before[id].1, "{id} has a new stored file");
        assert_eq!(after[id].0, before[id].0, "{id} is the same entry");
    }
    assert!(marked(&stack).await.is_empty(), "the marks are cleared");
    let (code, report, stderr) = verify(&stack, &[]).await;
    assert_eq!(code, 0, "{report} {stderr}");
    assert_eq!((&report["checked"], &report["ok"]), (&json!(5), &json!(5)));
    let (_, entry) = stack
        .get(
            Some(&project.token),
            &format!("/api/v1/mediaLibrary/{}", before["short"].0),
        )
        .await;
    assert!(entry["asset"].get("damaged").is_none(), "{entry}");

    // A file found changed and then whole again (put back from a backup) loses its mark.
    let kept = root.join(&after["kept-etag"].1);
    flip_a_byte(&kept);
    let (code, report, _) = verify(&stack, &[]).await;
    assert_eq!((code, &report["wrongHash"]), (3, &json!(1)), "{report}");
    assert_eq!(marked(&stack).await.len(), 1);
    flip_a_byte(&kept);
    let (code, report, _) = verify(&stack, &[]).await;
    assert_eq!((code, &report["cleared"]), (0, &json!(1)), "{report}");
    assert!(marked(&stack).await.is_empty());

    // The MD5 an entry keeps is checked too (here the entry's value is what changed).
    let wrong_md5 = "0".repeat(32);
    let real_md5: String = stack
        .sql("SELECT md5 FROM media_entries WHERE external_id = 'kept-sum'")
        .await[0]
        .get(0);
    stack
        .sql(&format!(
            "UPDATE media_entries SET md5 = '{wrong_md5}' WHERE external_id = 'kept-sum'"
        ))
        .await;
    let (code, report, _) = verify(&stack, &[]).await;
    assert_eq!(code, 3, "{report}");
    let bad = bad_by_id(&report);
    assert_eq!(
        (
            &bad["kept-sum"]["algorithm"],
            &bad["kept-sum"]["expected"],
            &bad["kept-sum"]["found"]
        ),
        (&json!("md5"), &json!(wrong_md5), &json!(real_md5)),
        "{report}"
    );
    stack.finish().await;
}

/// The same against S3 storage (moto's server): a deleted and an overwritten object are
/// found, and the next import stores them again.
#[tokio::test]
async fn storage_verify_checks_objects_in_s3_storage() {
    let s3 = OwnS3::start("vit-verify").await;
    let stack = Stack::start(Options {
        env: s3.env("library"),
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("s3verify").await;
    let body = batch("archive")
        .video(videos.url("/etag/sample.mp4"), "gone")
        .video(videos.url("/etag/other.mp4"), "short")
        .video(videos.url("/etag/sample.webm"), "kept")
        .build();
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["overview"]["imported"], 3, "{status}");
    let before = entries(&stack).await;
    let http = reqwest::Client::new();
    let object = |id: &str| s3.url(&format!("library/{}", before[id].1));
    let deleted = http.delete(object("gone")).send().await.unwrap();
    assert!(deleted.status().is_success(), "{deleted:?}");
    let overwritten = http
        .put(object("short"))
        .body(fixture("other.mp4")[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert!(overwritten.status().is_success(), "{overwritten:?}");

    let (code, report, stderr) = verify(&stack, &[]).await;
    assert_eq!(code, 3, "{report} {stderr}");
    for (field, count) in [("checked", 3), ("ok", 1), ("missing", 1), ("wrongSize", 1)] {
        assert_eq!(report[field], count, "{field}: {report}");
    }
    let bad = bad_by_id(&report);
    assert_eq!(bad["gone"]["problem"], "missing", "{report}");
    assert_eq!(bad["short"]["found"], 1000, "{report}");

    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(
        states(&status),
        BTreeMap::from([
            ("gone".into(), "imported".into()),
            ("kept".into(), "skipped".into()),
            ("short".into(), "imported".into()),
        ]),
        "{status}"
    );
    assert_eq!(videos.hits("/etag/sample.mp4 200"), 2);
    assert_eq!(videos.hits("/etag/other.mp4 200"), 2);
    assert_eq!(videos.hits("/etag/sample.webm 304"), 1);
    let (code, report, stderr) = verify(&stack, &[]).await;
    assert_eq!(code, 0, "{report} {stderr}");
    assert_eq!(report["ok"], 3);
    stack.finish().await;
}

/// A worker with `storage.verify_rate_mib` verifies continuously: one worker of two holds
/// the verifier's lock, it continues from where the last verifier got to (the round's
/// rest first, then a new round from the top), marks what it finds and counts it, and the
/// API's gauge shows the marked entries.
#[tokio::test]
async fn workers_verify_continuously_one_at_a_time_from_where_the_last_got_to() {
    let mut stack = Stack::start(Options::with_env(&[A_FILE_EACH])).await;
    let videos = VideoServer::start().await;
    let project = stack.project("continuous").await;
    let body = batch("archive")
        .urls((0..4).map(|i| videos.url(&format!("/videos/sample.mp4?n={i}"))))
        .build();
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["overview"]["imported"], 4, "{status}");
    let in_order: Vec<(String, String)> = stack
        .sql("SELECT id, asset_key FROM media_entries ORDER BY id")
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // The first and the last entry's files are gone; an earlier verifier got past the
    // second entry before it stopped.
    let root = stack.dir.join("videos");
    std::fs::remove_file(root.join(&in_order[0].1)).unwrap();
    std::fs::remove_file(root.join(&in_order[3].1)).unwrap();
    stack
        .sql(&format!(
            "INSERT INTO storage_verify (last_entry_id) VALUES ('{}')",
            in_order[1].0
        ))
        .await;

    let rate = [("VIDEO_IMPORT__STORAGE__VERIFY_RATE_MIB", "20")];
    let verifiers = [
        stack.spawn_worker_with(&rate).await,
        stack.spawn_worker_with(&rate).await,
    ];
    let found_at = stack
        .poll_until(
            "the verifier to mark both entries",
            Duration::from_secs(90),
            async || {
                let rows = stack
                    .sql(&format!(
                        "SELECT id, damaged_at FROM media_entries WHERE damaged_at IS NOT NULL
                         AND id IN ('{}', '{}')",
                        in_order[0].0, in_order[3].0
                    ))
                    .await;
                if rows.len() == 2 {
                    Ok(rows
                        .iter()
                        .map(|r| {
                            (
                                r.get::<_, String>(0),
                                r.get::<_, chrono::DateTime<chrono::Utc>>(1),
                            )
                        })
                        .collect::<BTreeMap<_, _>>())
                } else {
                    Err(format!("{} marked", rows.len()))
                }
            },
        )
        .await;
    assert!(
        found_at[&in_order[3].0] < found_at[&in_order[0].0],
        "the rest of the round first, then the top: {found_at:?}"
    );
    let finished: Option<chrono::DateTime<chrono::Utc>> = stack
        .sql("SELECT last_round_finished_at FROM storage_verify")
        .await[0]
        .get(0);
    assert!(finished.is_some(), "a round was finished");

    // One verifier at a time: one holds the lock and counted both; the other found none.
    let holders: Vec<&str> = verifiers
        .iter()
        .filter(|w| {
            stack
                .log(&w.name)
                .contains("verifying stored objects (this worker holds the verifier's lock)")
        })
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(holders.len(), 1, "{holders:?}");
    let mut missing = Vec::new();
    for worker in &verifiers {
        let text = stack.metrics(&worker.metrics_address()).await;
        missing.push(
            metric(
                &text,
                "video_import_storage_damaged_found_total{kind=\"missing\"}",
            )
            .unwrap_or_else(|| panic!("no damaged counter:\n{text}")),
        );
        if worker.name == holders[0] {
            let objects = metric(&text, "video_import_storage_verified_objects_total").unwrap();
            let bytes = metric(&text, "video_import_storage_verified_bytes_total").unwrap();
            assert!(objects >= 4.0, "{text}");
            assert!(bytes >= 2.0 * fixture("sample.mp4").len() as f64, "{text}");
        }
    }
    missing.sort_by(f64::total_cmp);
    assert_eq!(missing, [0.0, 2.0]);
    // The API's gauge counts the marked entries (it measures every 5 s).
    let api = stack.api_url.trim_start_matches("http://").to_string();
    stack
        .poll_until(
            "the API's damaged-entries gauge",
            Duration::from_secs(20),
            async || {
                let text = stack.metrics(&api).await;
                match metric(&text, "video_import_storage_damaged_entries") {
                    Some(2.0) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    stack.finish().await;
}

/// A source of `sample.mp4` with an ETag whose conditional requests are held until the
/// test lets them through: `asked` is told when one arrives, `go` lets it answer 304.
struct HeldSource {
    url: String,
    asked: std::sync::Arc<tokio::sync::Notify>,
    go: std::sync::Arc<tokio::sync::Notify>,
    /// What it answered, in order.
    answers: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
}

impl HeldSource {
    async fn start() -> Self {
        use axum::http::{header, HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        let asked = std::sync::Arc::new(tokio::sync::Notify::new());
        let go = std::sync::Arc::new(tokio::sync::Notify::new());
        let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (held_asked, held_go, noted) = (asked.clone(), go.clone(), answers.clone());
        let app = axum::Router::new().route(
            "/held/sample.mp4",
            axum::routing::get(move |headers: HeaderMap| {
                let (asked, go, answers) = (held_asked.clone(), held_go.clone(), noted.clone());
                async move {
                    let tag = "\"v1\"";
                    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v == tag) {
                        asked.notify_one();
                        go.notified().await;
                        answers.lock().unwrap().push(304);
                        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
                    }
                    answers.lock().unwrap().push(200);
                    ([(header::ETAG, tag)], fixture("sample.mp4")).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/held/sample.mp4", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            asked,
            go,
            answers,
        }
    }
}

/// The race the verifier can lose to a re-import: the source answered 304 for a stored file
/// found missing meanwhile. The video is downloaded again at once, without conditions,
/// instead of failing; the entry gets a whole file and loses its mark.
#[tokio::test]
async fn a_304_that_meets_a_file_marked_damaged_meanwhile_is_downloaded_again() {
    let stack = Stack::start(Options::with_env(&[A_FILE_EACH])).await;
    let source = HeldSource::start().await;
    let project = stack.project("meanwhile").await;
    let body = batch("archive").video(&source.url, "held").build();
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["overview"]["imported"], 1, "{status}");
    let before = entries(&stack).await;

    // The re-import asks with the ETag; while its request is held, the stored file goes
    // and the verifier marks the entry.
    let job = stack.import(&project.token, &body).await;
    tokio::time::timeout(Duration::from_secs(60), source.asked.notified())
        .await
        .expect("the worker asks whether the source changed");
    let root = stack.dir.join("videos");
    std::fs::remove_file(root.join(&before["held"].1)).unwrap();
    let (code, report, stderr) = verify(&stack, &[]).await;
    assert_eq!(
        (code, &report["missing"]),
        (3, &json!(1)),
        "{report} {stderr}"
    );
    assert_eq!(marked(&stack).await.len(), 1);
    source.go.notify_one();

    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(
        states(&status),
        BTreeMap::from([("held".into(), "imported".into())]),
        "{status}"
    );
    assert_eq!(*source.answers.lock().unwrap(), [200, 304, 200]);
    let after = entries(&stack).await;
    assert_eq!(after["held"].0, before["held"].0, "the same entry");
    assert_ne!(after["held"].1, before["held"].1, "a new stored file");
    assert!(marked(&stack).await.is_empty(), "the mark is cleared");
    let (code, report, stderr) = verify(&stack, &[]).await;
    assert_eq!((code, &report["ok"]), (0, &json!(1)), "{report} {stderr}");
    stack.finish().await;
}
