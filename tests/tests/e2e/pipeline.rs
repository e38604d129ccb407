//! The import pipeline end to end: the three real binaries, PostgreSQL, RabbitMQ,
//! a local video server and a local webhook receiver.

use serde_json::{json, Value};
use video_import_tests::receiver::Receiver;
use video_import_tests::videos::{fixture, sha256, VideoServer};
use video_import_tests::{
    batch, files_below, stored_bytes, Kind, Options, Stack, A_FILE_EACH, NO_TEST_SERVERS,
};

/// The seed's example request, with the video URL pointed at the local server.
fn seed_body(video_url: &str, webhook: &str) -> String {
    format!(
        r#"{{
    "systemName": "identifier-for-your-system",
    "webhook": "{webhook}",
    "context": {{
      "myIdentifier": "some-identifier-sent-to-the-webhook"
    }},
    "videos": [
      {{
        "url": "{video_url}",
        "id": "123abc",
        "fileName": "foo",
        "metadata": {{
          "title": "sample video",
          "credit": "LC"
        }}
      }}
    ]
  }}"#
    )
}

#[tokio::test]
async fn seed_example_imports_the_video_and_signs_the_webhook() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("archive").await;

    let body = seed_body(&videos.url("/videos/sample.mp4"), &receiver.url);
    let (code, response) = stack.import_raw(Some(&project.token), &body).await;
    assert_eq!(code, 200, "{response}");
    let job = response["id"].as_str().unwrap().to_string();

    let hooks = receiver.wait_for(1, 30).await;
    let hook = &hooks[0];
    assert!(
        hook.signature_valid(&project.secret),
        "signature must verify"
    );
    assert_eq!(hook.header("webhook-id"), format!("msg_{job}"));
    let ts: i64 = hook.header("webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
    // The context is replayed byte for byte, whitespace included.
    let raw = String::from_utf8(hook.body.to_vec()).unwrap();
    assert!(
        raw.contains(
            "\"context\":{\n      \"myIdentifier\": \"some-identifier-sent-to-the-webhook\"\n    }"
        ),
        "context not byte-for-byte: {raw}"
    );
    let payload = hook.json();
    assert_eq!(payload["id"], job);
    assert_eq!(payload["state"], "success");
    assert_eq!(payload["systemName"], "identifier-for-your-system");
    assert_eq!(
        payload["overview"],
        json!({"total": 1, "imported": 1, "skipped": 0, "failed": 0})
    );
    assert!(payload["startedAt"].is_string() && payload["finishedAt"].is_string());

    let status = stack.wait_webhook(&project.token, &job, "delivered").await;
    assert_eq!(status["finished"], true);
    assert_eq!(status["state"], "success");
    assert_eq!(status["id"], job);
    assert_eq!(status["overview"]["imported"], 1);
    assert_eq!(status["overview"]["pending"], 0);
    assert_eq!(status["webhook"]["state"], "delivered");
    assert_eq!(status["webhook"]["attempts"], 1);
    let video = &status["videos"][0];
    assert_eq!(video["state"], "imported");
    assert_eq!(video["externalId"], "123abc");
    assert_eq!(video["systemName"], "identifier-for-your-system");
    assert_eq!(video["video"]["mimeType"], "video/mp4");
    assert_eq!(
        video["video"]["originalUrl"],
        videos.url("/videos/sample.mp4")
    );
    let bytes = fixture("sample.mp4");
    assert_eq!(video["video"]["size"], bytes.len());

    let media_id = video["video"]["mediaId"].as_str().unwrap();
    let (code, entry) = stack
        .get(
            Some(&project.token),
            &format!("/api/v1/mediaLibrary/{media_id}"),
        )
        .await;
    assert_eq!(code, 200, "{entry}");
    assert_eq!(entry["id"], media_id);
    assert_eq!(entry["version"], 1);
    assert_eq!(entry["mediaType"], "video");
    assert_eq!(entry["fileName"], "foo");
    assert_eq!(
        entry["metadata"],
        json!({"title": "sample video", "credit": "LC"})
    );
    assert_eq!(entry["asset"]["sha256"], sha256(&bytes));
    assert_eq!(entry["asset"]["size"], bytes.len());
    // Technical metadata read from the file (64x48, one second of H.264).
    assert_eq!(entry["asset"]["width"], 64);
    assert_eq!(entry["asset"]["height"], 48);
    assert_eq!(entry["asset"]["codec"], "h264");
    let duration = entry["asset"]["duration"].as_f64().unwrap();
    assert!((duration - 1.0).abs() < 0.05, "{duration}");
    assert_eq!(video["video"]["width"], 64);
    // The stored file is the downloaded one.
    let key = entry["asset"]["key"].as_str().unwrap();
    let stored = stored_bytes(&stack.dir.join("videos"), key).expect("stored asset");
    assert_eq!(stored, bytes);

    let (code, found) = stack
        .get(
            Some(&project.token),
            "/api/v1/mediaLibrary?systemName=identifier-for-your-system&externalId=123abc",
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["id"], media_id);
    assert_eq!(receiver.assert_all_signed_by(&project.secret), 1);
    stack.finish().await;
}

#[tokio::test]
async fn two_jobs_importing_the_same_ids_at_once_leave_one_entry_each() {
    // Two workers record groups that hold videos of both jobs: an entry created earlier in
    // the same group is updated, not inserted twice, and replaced assets are removed (at
    // once: a file each; a pack goes with its last entry, see the sweep test).
    let stack = Stack::start(Options {
        workers: 2,
        ..Options::with_env(&[A_FILE_EACH])
    })
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("same-ids").await;
    let fifty = |file: &str, title: &str| {
        (0..50).fold(batch("archive"), |batch, i| {
            let url = videos.url(&format!("/videos/{file}?{i}"));
            batch.video_with(url, format!("ext-{i}"), "clip", json!({"title": title}))
        })
    };
    let first = stack
        .import(&project.token, &fifty("sample.mp4", "one"))
        .await;
    let second = stack
        .import(&project.token, &fifty("sample.webm", "two"))
        .await;
    for job in [&first, &second] {
        let status = stack.wait_finished(&project.token, job, 60).await;
        assert_eq!(status["overview"]["imported"], 50, "{status}");
    }
    let rows = stack
        .sql("SELECT count(*), min(version)::int8, max(version)::int8, count(DISTINCT asset_key) FROM media_entries")
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), 50, "one entry per id");
    assert_eq!(rows[0].get::<_, i64>(1), 2, "each entry written twice");
    assert_eq!(rows[0].get::<_, i64>(2), 2);
    assert_eq!(rows[0].get::<_, i64>(3), 50);
    let stored = files_below(&stack.dir.join("videos")).len();
    assert_eq!(stored, 50, "replaced assets are removed");
    stack.finish().await;
}

#[tokio::test]
async fn reimport_updates_the_same_entry_and_identical_reimport_is_skipped() {
    // A file each, so that the replaced one is seen removed at once.
    let stack = Stack::start(Options::with_env(&[A_FILE_EACH])).await;
    let videos = VideoServer::start().await;
    let project = stack.project("upserts").await;
    let one = |file: &str, title: &str| {
        let url = videos.url(&format!("/videos/{file}"));
        batch("archive").video_with(url, "ext-1", "clip", json!({"title": title}))
    };
    let first = stack
        .import(&project.token, &one("sample.mp4", "one"))
        .await;
    let first = stack.wait_finished(&project.token, &first, 30).await;
    let media_id = first["videos"][0]["video"]["mediaId"].clone();

    // Identical: skipped, same entry.
    let again = stack
        .import(&project.token, &one("sample.mp4", "one"))
        .await;
    let again = stack.wait_finished(&project.token, &again, 30).await;
    assert_eq!(again["state"], "success");
    assert_eq!(again["videos"][0]["state"], "skipped");
    assert_eq!(again["videos"][0]["reason"], "already exists");
    assert_eq!(again["videos"][0]["video"]["mediaId"], media_id);
    assert_eq!(again["overview"]["skipped"], 1);

    // New metadata: imported, same entry, version 2.
    let meta = stack
        .import(&project.token, &one("sample.mp4", "two"))
        .await;
    let meta = stack.wait_finished(&project.token, &meta, 30).await;
    assert_eq!(meta["videos"][0]["state"], "imported");
    assert_eq!(meta["videos"][0]["video"]["mediaId"], media_id);

    // New bytes: imported, same entry, version 3, old asset replaced.
    let (_, before) = stack
        .get(
            Some(&project.token),
            &format!("/api/v1/mediaLibrary/{}", media_id.as_str().unwrap()),
        )
        .await;
    let bytes = stack
        .import(&project.token, &one("sample.webm", "two"))
        .await;
    let bytes = stack.wait_finished(&project.token, &bytes, 30).await;
    assert_eq!(bytes["videos"][0]["state"], "imported");
    let (_, entry) = stack
        .get(
            Some(&project.token),
            &format!("/api/v1/mediaLibrary/{}", media_id.as_str().unwrap()),
        )
        .await;
    assert_eq!(entry["version"], 3);
    assert_eq!(entry["metadata"]["title"], "two");
    assert_eq!(entry["asset"]["mimeType"], "video/webm");
    assert_eq!(entry["asset"]["sha256"], sha256(&fixture("sample.webm")));
    let old_key = before["asset"]["key"].as_str().unwrap();
    assert!(
        !stack.dir.join("videos").join(old_key).exists(),
        "replaced asset is removed"
    );
    assert!(stack
        .dir
        .join("videos")
        .join(entry["asset"]["key"].as_str().unwrap())
        .exists());

    let rows = stack.sql("SELECT count(*) FROM media_entries").await;
    assert_eq!(
        rows[0].get::<_, i64>(0),
        1,
        "one entry for one (systemName, externalId)"
    );
    stack.finish().await;
}

#[tokio::test]
async fn missing_and_non_video_files_fail_with_reasons_and_the_webhook_says_so() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("failures").await;
    let job = stack
        .import(
            &project.token,
            &batch("archive")
                .webhook(&receiver.url)
                .video_with(videos.url("/videos/sample.mp4"), "good", "g", json!({}))
                .video_with(
                    videos.url("/videos/nothing-here.mp4"),
                    "missing",
                    "m",
                    json!({}),
                )
                .video_with(videos.url("/videos/page.html"), "html", "h", json!({})),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    assert_eq!(
        status["state"], "failed",
        "a job with failed videos is not a success"
    );
    assert_eq!(
        status["overview"],
        json!({"total": 3, "imported": 1, "skipped": 0, "failed": 2, "pending": 0})
    );
    let v = &status["videos"];
    assert_eq!(v[0]["state"], "imported");
    assert_eq!(v[1]["state"], "failed");
    assert_eq!(
        v[1]["reason"],
        "the server answered 404 Not Found for the video URL"
    );
    assert_eq!(v[2]["state"], "failed");
    assert_eq!(v[2]["reason"], "not a video (detected: text/html)");
    assert!(v[1].get("video").is_none());

    let hooks = receiver.wait_for(1, 30).await;
    let payload = hooks[0].json();
    assert_eq!(payload["state"], "failed");
    assert_eq!(payload["overview"]["failed"], 2);
    assert_eq!(
        payload["failures"],
        json!([
            {"externalId": "missing", "reason": "the server answered 404 Not Found for the video URL"},
            {"externalId": "html", "reason": "not a video (detected: text/html)"}
        ])
    );
    assert!(!payload.as_object().unwrap().contains_key("context"));
    // A failed job's webhook is signed like a successful one's.
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}

#[tokio::test]
async fn transient_source_errors_are_retried_until_the_video_arrives() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("flaky").await;
    // Two 503s: the first try and its quick retry fail, the delayed retry succeeds.
    let job = stack
        .import(
            &project.token,
            &batch("archive").video(videos.url("/flaky/2/sample.mp4"), "f"),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    assert_eq!(status["state"], "success", "{status}");
    assert_eq!(status["videos"][0]["state"], "imported");
    assert_eq!(videos.hits("/flaky/2/sample.mp4"), 3);
    let attempts = stack.sql("SELECT attempts FROM job_items").await;
    assert_eq!(
        attempts[0].get::<_, i32>(0),
        1,
        "one retry went through the delay queue"
    );

    // Always failing: gives up after the configured tries, with the last reason.
    let job = stack
        .import(
            &project.token,
            &batch("archive").video_with(videos.url("/flaky/100/sample.mp4"), "g", "g", json!({})),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    assert_eq!(status["state"], "failed");
    let reason = status["videos"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the server answered 503 Service Unavailable")
            && reason.ends_with("(gave up after 3 tries)"),
        "{reason}"
    );
    stack.finish().await;
}

#[tokio::test]
async fn private_addresses_are_refused_unless_configured() {
    let stack = Stack::start(Options {
        env: vec![(
            "VIDEO_IMPORT__FETCH__ALLOWED_NETWORKS".into(),
            NO_TEST_SERVERS.into(),
        )],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("ssrf").await;
    // Literal private addresses are turned away at the door, naming the field.
    let mapped = videos
        .url("/videos/sample.mp4")
        .replace("127.0.0.1", "[::ffff:127.0.0.1]");
    let literal = batch("archive")
        .video_with(videos.url("/videos/sample.mp4"), "a", "a", json!({}))
        .video_with(
            "http://169.254.169.254/latest/meta-data",
            "b",
            "b",
            json!({}),
        )
        .video_with(mapped, "c", "c", json!({}));
    let (code, body) = stack
        .import_raw(Some(&project.token), &literal.build().to_string())
        .await;
    assert_eq!(code, 400, "{body}");
    for field in ["videos[0].url", "videos[1].url", "videos[2].url"] {
        let message = body["error_details"][field].as_str().unwrap_or_default();
        assert!(
            message.contains("fetch.allowed_networks"),
            "{field}: {body}"
        );
    }
    // A name is resolved by the worker, which refuses every address it resolves to.
    let job = stack
        .import(
            &project.token,
            &batch("archive").video_with(
                videos
                    .url("/videos/sample.mp4")
                    .replace("127.0.0.1", "localhost"),
                "c",
                "c",
                json!({}),
            ),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    for video in status["videos"].as_array().unwrap() {
        assert_eq!(video["state"], "failed");
        let reason = video["reason"].as_str().unwrap();
        assert!(reason.starts_with("refused to connect to"), "{reason}");
        assert!(reason.contains("allowed_networks"), "{reason}");
    }
    assert_eq!(
        videos.hits("/videos/sample.mp4"),
        0,
        "no request reached the server"
    );
    assert_eq!(
        stack.sql("SELECT 1 FROM jobs").await.len(),
        1,
        "only the second batch is stored"
    );
    stack.finish().await;
}

#[tokio::test]
async fn invalid_batches_are_rejected_with_the_field_and_nothing_is_stored() {
    let stack = Stack::start(Options::api_only(&[(
        "VIDEO_IMPORT__API__MAX_BATCH_SIZE",
        "3",
    )]))
    .await;
    let project = stack.project("validation").await;
    let v = |url: &str, id: &str| json!({"url": url, "id": id, "fileName": "f", "metadata": {}});
    let ok = "https://archive.example/v.mp4";
    let cases: Vec<(String, &str, &str)> = vec![
        ("{\"systemName\": \"a\", \"videos\": [".into(), "body", "is not valid JSON"),
        (json!({"videos": [v(ok, "a")]}).to_string(), "systemName", "is required"),
        (json!({"systemName": "a"}).to_string(), "videos", "is required"),
        (json!({"systemName": "a", "videos": [{"id": "a", "fileName": "f", "metadata": {}}]}).to_string(), "videos[0].url", "is required"),
        (json!({"systemName": "a", "videos": [{"url": ok, "id": "a", "metadata": {}}]}).to_string(), "videos[0].fileName", "is required"),
        (json!({"systemName": "a", "videos": [v(ok, "a"), {"url": ok, "id": 5, "fileName": "f", "metadata": {}}]}).to_string(), "videos[1].id", "must be a string"),
        (json!({"systemName": "a", "videos": [v(ok, "a"), v("data:video/mp4;base64,AAAA", "b")]}).to_string(), "videos[1].url", "data: URLs are not allowed"),
        (json!({"systemName": "a", "videos": [v("ftp://archive.example/v.mp4", "a")]}).to_string(), "videos[0].url", "http, https or s3"),
        (json!({"systemName": "a", "videos": [v("not a url", "a")]}).to_string(), "videos[0].url", "is not a valid URL"),
        (json!({"systemName": "a", "videos": [v(ok, "a"), v(ok, "b"), v(ok, "a")]}).to_string(), "videos[2].id", "duplicates videos[0].id"),
        (json!({"systemName": "a", "videos": []}).to_string(), "videos", "at least one"),
        (json!({"systemName": "a", "videos": [v(ok, "a"), v(ok, "b"), v(ok, "c"), v(ok, "d")]}).to_string(), "videos", "at most 3"),
        (json!({"systemName": "a", "context": {"k": "x".repeat(8200)}, "videos": [v(ok, "a")]}).to_string(), "context", "at most 8192 bytes"),
        (json!({"systemName": "a", "context": "text", "videos": [v(ok, "a")]}).to_string(), "context", "must be a JSON object"),
        (json!({"systemName": "a", "webhook": "javascript:alert(1)", "videos": [v(ok, "a")]}).to_string(), "webhook", "http or https"),
        (json!({"systemName": "", "videos": [v(ok, "a")]}).to_string(), "systemName", "must not be empty"),
    ];
    for (body, field, message) in &cases {
        let (code, response) = stack.import_raw(Some(&project.token), body).await;
        assert_eq!(code, 400, "{field}: {response}");
        assert_eq!(response["status"], 400);
        assert_eq!(response["error"], "Bad Request");
        let detail = response["error_details"][field]
            .as_str()
            .unwrap_or_else(|| {
                panic!("expected error_details.{field} for {body:.80}, got {response}")
            });
        assert!(
            detail.contains(message),
            "{field}: {detail:?} should mention {message:?}"
        );
    }
    let stored = stack
        .sql("SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM job_items) + (SELECT count(*) FROM outbox) + (SELECT count(*) FROM dispatch)")
        .await;
    assert_eq!(
        stored[0].get::<_, i64>(0),
        0,
        "a rejected batch stores nothing"
    );

    // A valid batch still goes through, exactly at the maximum size.
    let job = stack
        .import(
            &project.token,
            &batch("a").video(ok, "a").video(ok, "b").video(ok, "c"),
        )
        .await;
    assert_eq!(job.len(), 12);
    stack.finish().await;
}

#[tokio::test]
async fn tokens_and_scopes_are_enforced_and_projects_are_isolated() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let project = stack.project("owner").await;
    let other = stack.project("stranger").await;
    let read_only = stack.token("owner", &["public-api:read"]).await;
    let write_only = stack.token("owner", &["public-api:write"]).await;
    let one = batch("a").video("https://archive.example/v.mp4", "a");
    let body = one.clone().build().to_string();

    let (code, response) = stack.import_raw(None, &body).await;
    assert_eq!(code, 401);
    assert_eq!(response["error"], "Unauthorized");
    assert!(response["error_details"]["access_token"].is_string());
    let (code, response) = stack.import_raw(Some("vit_not-a-real-token"), &body).await;
    assert_eq!(code, 401);
    assert_eq!(
        response["error_details"]["access_token"],
        "The access token is invalid."
    );
    let (code, response) = stack.import_raw(Some(&read_only), &body).await;
    assert_eq!(code, 403);
    assert_eq!(response["error"], "Forbidden");

    let job = stack.import(&write_only, &one).await;
    let (code, _) = stack
        .get(
            Some(&read_only),
            &format!("/api/v1/import/videos/status?id={job}"),
        )
        .await;
    assert_eq!(code, 403, "status needs public-api:write");
    let (code, _) = stack
        .get(
            Some(&write_only),
            "/api/v1/mediaLibrary?systemName=a&externalId=a",
        )
        .await;
    assert_eq!(code, 403, "media library reads need public-api:read");
    let (code, status) = stack
        .get(
            Some(&write_only),
            &format!("/api/v1/import/videos/status?id={job}"),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(status["state"], "started");
    assert_eq!(status["finished"], false);
    assert_eq!(status["videos"][0]["state"], "pending");

    // Another project's job does not exist for this token.
    let (code, response) = stack
        .get(
            Some(&other.token),
            &format!("/api/v1/import/videos/status?id={job}"),
        )
        .await;
    assert_eq!(code, 404, "{response}");
    assert_eq!(response["error"], "Not Found");
    let (code, _) = stack
        .get(Some(&project.token), "/api/v1/import/videos/status?id=nope")
        .await;
    assert_eq!(code, 404);

    // Only the hash of a token is stored.
    let rows = stack.sql("SELECT token_hash FROM tokens").await;
    for row in rows {
        let hash: String = row.get(0);
        assert_eq!(hash.len(), 64);
        assert!(!hash.starts_with("vit_"));
    }
    assert_ne!(project.token, other.token);
    stack.finish().await;
}

#[tokio::test]
async fn two_workers_share_a_batch_without_duplicates_and_send_one_webhook() {
    let stack = Stack::start(Options {
        workers: 2,
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("parallel").await;
    let body = (0..60).fold(batch("archive").webhook(&receiver.url), |batch, i| {
        let file = if i % 2 == 0 {
            "sample.mp4"
        } else {
            "other.mp4"
        };
        let url = videos.url(&format!("/videos/{file}"));
        batch.video_with(url, format!("v{i}"), "f", json!({"n": i}))
    });
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["state"], "success", "{status}");
    assert_eq!(status["overview"]["imported"], 60);

    let entries = stack
        .sql("SELECT count(*), count(DISTINCT external_id) FROM media_entries")
        .await;
    assert_eq!(entries[0].get::<_, i64>(0), 60);
    assert_eq!(entries[0].get::<_, i64>(1), 60);
    // Both workers took part.
    let workers = stack.running(Kind::Worker);
    assert_eq!(workers.len(), 2);
    for worker in workers {
        assert!(
            stack.log(&worker.name).contains("video done"),
            "{} did no work",
            worker.name
        );
    }
    receiver.wait_for(1, 30).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 1, "exactly one webhook per job");
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}

#[tokio::test]
async fn webhook_is_retried_with_the_same_id_until_the_receiver_accepts_it() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[500, 503]).await;
    let project = stack.project("retries").await;
    let job = stack
        .import(
            &project.token,
            &batch("archive")
                .webhook(&receiver.url)
                .context(json!({"a": 1}))
                .video_with(videos.url("/videos/sample.mp4"), "a", "a", json!({})),
        )
        .await;
    let hooks = receiver.wait_for(3, 30).await;
    let ids: Vec<&str> = hooks.iter().map(|h| h.header("webhook-id")).collect();
    assert!(ids.iter().all(|id| *id == format!("msg_{job}")), "{ids:?}");
    // Every attempt is signed anew (its own timestamp), each one valid.
    receiver.assert_all_signed_by(&project.secret);
    for hook in &hooks {
        assert_eq!(hook.json()["context"], json!({"a": 1}));
    }
    let status = stack.wait_webhook(&project.token, &job, "delivered").await;
    assert_eq!(status["webhook"]["attempts"], 3);
    assert_eq!(
        status["webhook"]["lastError"],
        "the receiver answered 503 Service Unavailable"
    );
    let attempts = stack
        .sql("SELECT http_status FROM webhook_attempts ORDER BY id")
        .await;
    let codes: Vec<Option<i32>> = attempts.iter().map(|r| r.get(0)).collect();
    assert_eq!(codes, vec![Some(500), Some(503), Some(204)]);
    stack.finish().await;
}

#[tokio::test]
async fn a_webhook_that_never_succeeds_ends_failed_and_visible() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[500, 500, 500, 500, 500]).await;
    let project = stack.project("deadhook").await;
    let job = stack
        .import(
            &project.token,
            &batch("archive").webhook(&receiver.url).video_with(
                videos.url("/videos/sample.mp4"),
                "a",
                "a",
                json!({}),
            ),
        )
        .await;
    // The first attempt and the three configured retries.
    receiver.wait_for(4, 30).await;
    let status = stack.wait_webhook(&project.token, &job, "failed").await;
    assert_eq!(status["webhook"]["attempts"], 4);
    assert_eq!(
        status["webhook"]["lastError"],
        "the receiver answered 500 Internal Server Error; gave up after 4 attempts"
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 4, "no attempts after giving up");
    // Refused attempts were signed too: the receiver's answers, not the signatures, failed.
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}

#[tokio::test]
async fn accepted_jobs_wait_in_postgresql_while_rabbitmq_is_unreachable() {
    let mut stack = Stack::start(Options::api_only(&[])).await;
    let videos = VideoServer::start().await;
    let project = stack.project("outbox").await;
    // A second API whose broker address answers nothing.
    let dead_broker = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        video_import_tests::free_port()
    );
    let cut_off = stack
        .spawn_api("api-cut-off", &[("VIDEO_IMPORT__AMQP__URL", &dead_broker)])
        .await;
    let response = stack
        .http
        .post(format!("{cut_off}/api/v1/import/videos"))
        .bearer_auth(&project.token)
        .json(
            &batch("archive")
                .video_with(videos.url("/videos/sample.mp4"), "a", "a", json!({}))
                .video_with(videos.url("/videos/other.mp4"), "b", "b", json!({})),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "accepted although RabbitMQ is unreachable"
    );
    let job = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ready = stack
        .http
        .get(format!("{cut_off}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["rabbitmq"],
        "unreachable"
    );

    // The job waits in PostgreSQL; a worker that reaches the broker hands its videos to the
    // fetch queue and finishes it.
    stack.kill("api-cut-off").await;
    stack.spawn_worker().await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    assert_eq!(status["state"], "success", "{status}");
    assert_eq!(status["overview"]["imported"], 2);
    let left = stack
        .sql("SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM dispatch)")
        .await;
    assert_eq!(left[0].get::<_, i64>(0), 0);
    stack.finish().await;
}

#[tokio::test]
async fn migrate_is_idempotent_when_run_concurrently() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let (a, b) = tokio::join!(stack.api_cli(&["migrate"]), stack.api_cli(&["migrate"]));
    assert!(a.status.success(), "{}", a.stderr);
    assert!(b.status.success(), "{}", b.stderr);
    let rows = stack
        .sql("SELECT count(*), max(version)::bigint FROM schema_migrations")
        .await;
    let (applied, newest) = (rows[0].get::<_, i64>(0), rows[0].get::<_, i64>(1));
    let latest = i64::from(video_import_shared::store::migrate::latest());
    assert_eq!(newest, latest, "every migration ran");
    let known = video_import_shared::store::migrate::versions().len() as i64;
    assert_eq!(applied, known, "each migration applied once");
    stack.finish().await;
}

#[tokio::test]
async fn a_listen_address_in_use_stops_every_binary_at_start() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    for (binary, args, key) in [
        ("video-import-api", &["serve"][..], "api.listen"),
        ("video-import-worker", &[][..], "metrics.listen"),
        ("video-import-notifier", &[][..], "metrics.listen"),
    ] {
        let variable = format!("VIDEO_IMPORT__{}", key.to_uppercase().replace('.', "__"));
        let extra = [(variable.as_str(), address.as_str())];
        let run = stack.run_binary(binary, args, &extra);
        let out = tokio::time::timeout(std::time::Duration::from_secs(20), run)
            .await
            .unwrap_or_else(|_| panic!("{binary} kept running on a taken {key}"));
        assert_eq!(out.status.code(), Some(2), "{binary}: {}", out.stderr);
        assert!(
            out.stderr.contains(key) && out.stderr.contains(&address),
            "{binary}: {}",
            out.stderr
        );
    }
    stack.finish().await;
}

#[tokio::test]
async fn bad_configuration_fails_at_start_naming_the_key() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let cases = [
        (
            "VIDEO_IMPORT__API__MAX_BATCH_SIZE",
            "lots",
            "api.max_batch_size",
        ),
        ("VIDEO_IMPORT__API__LISTN", "127.0.0.1:1", "listn"),
        (
            "VIDEO_IMPORT__FETCH__ALLOWED_NETWORKS",
            "10.0.0.0/8,intranet",
            "fetch.allowed_networks",
        ),
        (
            "VIDEO_IMPORT__METRICS__LISTEN",
            "everywhere",
            "metrics.listen",
        ),
    ];
    for (key, value, named) in cases {
        let out = stack.api_cli_with(&["migrate"], &[(key, value)]).await;
        assert_eq!(out.status.code(), Some(2), "{key}={value}: {}", out.stderr);
        assert!(out.stderr.contains(named), "{key}={value}: {}", out.stderr);
        // The value at fault is named too (for a list, the element).
        let shown = value.rsplit(',').next().unwrap();
        assert!(
            out.stderr.contains(&format!("\"{shown}\"")),
            "{key}={value}: {}",
            out.stderr
        );
    }
    let out = stack
        .api_cli_with(
            &["migrate"],
            &[(
                "VIDEO_IMPORT__DATABASE__URL",
                "postgres://postgres@127.0.0.1:1/x",
            )],
        )
        .await;
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("cannot connect to PostgreSQL"),
        "{}",
        out.stderr
    );
    stack.finish().await;
}
