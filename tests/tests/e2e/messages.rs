//! Versioned messages: every version ever published (the golden fixtures) decodes, or is
//! refused with its reason; a message of a version a binary does not read is dead-lettered
//! with that reason and settled, never dropped: a newer one waits for a newer binary, a
//! retired one's video is handed out again.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use video_import_shared::messages::{DeliverWebhook, FetchVideo, FetchVideos, Round, Unreadable};
use video_import_tests::receiver::Receiver;
use video_import_tests::videos::VideoServer;
use video_import_tests::{Options, Stack};

fn fixture(queue: &str, version: u32) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/messages")
        .join(queue)
        .join(format!("v{version}.json"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}): every version ever published keeps its fixture",
            path.display()
        )
    })
}

#[test]
fn every_fetch_message_ever_published_decodes_or_is_refused_with_its_reason() {
    for version in 1..=FetchVideo::CHECKSUM_VERSION {
        let decoded = FetchVideo::decode(&fixture("fetch", version));
        if version < FetchVideo::VERSIONS.oldest {
            assert_eq!(
                decoded.unwrap_err().to_string(),
                format!(
                    "message version {version} not supported by this binary (it reads {}..{})",
                    FetchVideo::VERSIONS.oldest,
                    FetchVideo::VERSIONS.newest
                )
            );
            continue;
        }
        let message = decoded.unwrap_or_else(|e| panic!("fetch v{version}: {e}"));
        assert_eq!(message.job_id, "job_0123456789");
        assert_eq!(message.idx, 4);
        assert_eq!(message.attempt, 1);
        let item = message.item();
        assert_eq!(item.project_id, 7);
        assert_eq!(item.external_id, "tape-0042");
        assert_eq!(item.url, "https://archive.example/masters/0042.mp4");
        assert_eq!(item.metadata["title"], "Evening news, 3 March 1987");
        let known = item.known.expect("the entry's validators");
        assert_eq!(known.etag.as_deref(), Some("\"5e1f\""));
        if version >= 4 {
            assert_eq!(item.checksum.sha256.as_deref(), Some("9f2c5e1f"));
            assert_eq!(item.checksum.md5, None);
        }
        // What this binary publishes reads back the same, v4 only with a checksum.
        let again = message.outgoing(None, None);
        assert_eq!(FetchVideo::decode(&again.payload).unwrap(), message);
        let published: serde_json::Value = serde_json::from_slice(&again.payload).unwrap();
        assert_eq!(published["v"], if version >= 4 { 4 } else { 3 });
    }
    // v5: several videos, each with its own trace; the first is v4's video.
    let v5 = FetchVideos::decode(&fixture("fetch", FetchVideos::VERSION), None)
        .unwrap_or_else(|e| panic!("fetch v5: {e}"));
    assert_eq!(v5.len(), 2);
    let v4 = FetchVideo::decode(&fixture("fetch", 4)).unwrap();
    assert_eq!(v5[0].fetch, v4);
    assert_eq!(
        v5[0].trace().expect("its trace").trace_id,
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(v5[1].fetch.item().external_id, "n-1");
    assert_eq!(v5[1].trace(), None);
    // Every earlier version reads as the one video it carries.
    let alone = FetchVideos::decode(&fixture("fetch", 3), None).unwrap();
    assert_eq!(alone.len(), 1);
    let newer = br#"{"v": 6, "job_id": "j", "idx": 0}"#;
    assert!(FetchVideos::decode(newer, None).unwrap_err().is_newer());
}

#[test]
fn every_webhook_message_ever_published_decodes_or_is_refused_with_its_reason() {
    for version in 1..=DeliverWebhook::VERSION {
        let decoded = DeliverWebhook::decode(&fixture("webhook", version));
        if version < DeliverWebhook::VERSIONS.oldest {
            let error = decoded.unwrap_err();
            assert!(matches!(error, Unreadable::Version { found, .. } if found == version));
            assert!(!error.is_newer());
            continue;
        }
        let message = decoded.unwrap_or_else(|e| panic!("webhook v{version}: {e}"));
        assert_eq!(message.job_id, "job_0123456789");
        assert_eq!(message.attempt, 2);
        assert_eq!(message.url, "https://cms.example/hooks/import");
        let expected = if version == 2 {
            Round::Current
        } else {
            Round::Of(2)
        };
        assert_eq!(message.round, expected);
    }
}

#[tokio::test]
async fn messages_of_versions_a_binary_does_not_read_are_settled_with_the_reason() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("versions").await;
    // Videos that stall, so their own messages stay in flight while the foreign ones arrive.
    let body = json!({
        "systemName": "versions",
        "videos": [
            {"url": videos.url("/stall/sample.mp4"), "id": "old", "fileName": "a.mp4", "metadata": {}},
            {"url": videos.url("/stall/sample.mp4?b"), "id": "new", "fileName": "b.mp4", "metadata": {}}
        ]
    });
    let job = stack.import(&project.token, &body).await;
    // Both videos are handed out and stalling first: a retired message handled before the
    // dispatcher's first hand-out only lowers a range it was about to hand out anyway, and
    // the video would be downloaded once, not again.
    wait_for_hits(&stack, &videos, 2).await;
    // A message from a newer release: the worker rejects it, and its dead-letter consumer
    // keeps it for a binary that reads it, saying so in the video's status.
    stack
        .publish(
            "fetch",
            &json!({"v": 99, "job_id": job, "idx": 1, "attempt": 0, "shape": "unknown"}),
        )
        .await;
    // A message of a retired version: its video is handed out again, read from PostgreSQL
    // by the dispatcher, and downloaded a second time (both stall; 2 + 1 requests).
    stack
        .publish("fetch", &json!({"job_id": job, "idx": 0, "attempt": 0}))
        .await;
    wait_for_hits(&stack, &videos, 3).await;
    let status = stack.status(&project.token, &job).await;
    assert_eq!(status["videos"][0]["state"], "pending", "{status}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = stack.status(&project.token, &job).await;
        let waiting = status["videos"][1]["lastError"]
            .as_str()
            .unwrap_or_default();
        if waiting.contains("message version 99 not supported by this binary (it reads 2..5)") {
            assert_eq!(status["videos"][1]["state"], "pending", "{status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let log: String = std::fs::read_dir(&stack.dir)
        .expect("the stack's folder")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("worker"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        log.contains("dead-lettering a message this binary cannot read"),
        "{log}"
    );
    assert!(
        log.contains("a retired message's video is handed out again"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    stack.finish().await;
}

/// Waits until the stalling video has been requested `count` times (both videos count).
async fn wait_for_hits(stack: &Stack, videos: &VideoServer, count: u32) {
    stack
        .poll_until(
            &format!("the stalling video to be requested {count} times"),
            Duration::from_secs(30),
            async || match videos.hits("/stall/sample.mp4") {
                hits if hits >= count => Ok(()),
                _ => Err(format!("{:?}", videos.counts())),
            },
        )
        .await;
}

#[tokio::test]
async fn a_retired_webhook_message_is_queued_again_as_a_current_one() {
    let stack = Stack::start(Options {
        // After the first failure the next attempt waits 60 s: what arrives sooner is the
        // retired message's attempt.
        env: vec![(
            "VIDEO_IMPORT__WEBHOOK__RETRY_SCHEDULE_SECS".into(),
            "60".into(),
        )],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[503]).await;
    let project = stack.project("oldhook").await;
    let body = json!({"systemName": "oldhook", "webhook": receiver.url, "videos": [
        {"url": videos.url("/videos/sample.mp4"), "id": "a", "fileName": "a", "metadata": {}}
    ]});
    let job = stack.import(&project.token, &body).await;
    receiver.wait_for(1, 30).await;
    // Attempt 2, as the first release published it (no URL, no version).
    stack
        .publish("webhook", &json!({"job_id": job, "attempt": 2}))
        .await;
    let status = stack.wait_webhook(&project.token, &job, "delivered").await;
    assert_eq!(status["webhook"]["attempts"], 2, "{status}");
    let hooks = receiver.received();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0].header("webhook-id"), hooks[1].header("webhook-id"));
    assert!(hooks[1].signature_valid(&project.secret));
    // The new release's first attempt too.
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}

#[tokio::test]
async fn a_big_round_goes_out_several_videos_to_a_message_and_each_is_imported_once() {
    let stack = Stack::start(Options::with_env(&[(
        "VIDEO_IMPORT__FETCH__VIDEOS_PER_MESSAGE",
        "8",
    )]))
    .await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("packed").await;
    let urls: Vec<String> = (0..200)
        .map(|i| videos.url(&format!("/slow/0/sample.mp4?n={i}")))
        .collect();
    let body = video_import_tests::batch("archive")
        .urls(&urls)
        .webhook(&receiver.url);
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["overview"]["imported"], 200, "{status}");
    assert_eq!(videos.hits("/slow/0/sample.mp4"), 200);
    for i in [0, 57, 199] {
        assert_eq!(
            videos.hits(&format!("/slow/0/sample.mp4?n={i}")),
            1,
            "video {i} was downloaded once"
        );
    }
    let dispatched = stack
        .over_workers("video_import_videos_dispatched_total")
        .await;
    let messages = stack
        .over_workers("video_import_fetch_messages_dispatched_total")
        .await;
    assert_eq!(dispatched, 200.0);
    assert!(
        messages <= 200.0 / 4.0,
        "200 videos went out in {messages} messages: they were not packed"
    );
    receiver.wait_for(1, 30).await;
    stack.finish().await;
}

#[tokio::test]
async fn a_message_of_several_videos_past_its_delivery_limit_is_split_not_failed() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("split").await;
    // Two videos that stall, so their own messages stay unacked while the broker sets a
    // packed copy aside, as it does after the delivery limit.
    let body = video_import_tests::batch("archive").urls([
        videos.url("/stall/sample.mp4?a"),
        videos.url("/stall/sample.mp4?b"),
    ]);
    let stalling = || videos.hits("/stall/sample.mp4");
    let job = stack.import(&project.token, &body).await;
    let video = |idx: i32, external_id: &str, url: String| {
        json!({"fetch": {"job_id": job, "idx": idx, "attempt": 0, "video": {
            "project_id": 0, "system_name": "", "external_id": external_id,
            "url": url, "file_name": "", "metadata": {}}}})
    };
    let stalled = async |at_least: u32| match stalling() {
        hits if hits >= at_least => Ok(()),
        _ => Err(format!("{:?}", videos.counts())),
    };
    stack
        .poll_until(
            "both downloads stalled",
            Duration::from_secs(30),
            async || stalled(2).await,
        )
        .await;
    stack
        .dead_letter(
            "fetch",
            &json!({"v": 5, "videos": [
                video(0, "v0", videos.url("/stall/sample.mp4?a")),
                video(1, "v1", videos.url("/stall/sample.mp4?b")),
            ]}),
        )
        .await;
    // Each video comes back alone (a second download of each), and neither fails: only a
    // video whose own message keeps exceeding the limit does.
    stack
        .poll_until(
            "the packed message split (each video downloaded again)",
            Duration::from_secs(30),
            async || stalled(4).await,
        )
        .await;
    let status = stack.status(&project.token, &job).await;
    assert_eq!(status["videos"][0]["state"], "pending", "{status}");
    assert_eq!(status["videos"][1]["state"], "pending", "{status}");
    stack.finish().await;
}
