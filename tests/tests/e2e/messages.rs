//! Versioned messages: every version ever published (the golden fixtures) decodes, or is
//! refused with its reason; a message of a version a binary does not read is dead-lettered
//! and settled, never dropped.

use std::path::PathBuf;

use serde_json::{json, Value};
use video_import_shared::messages::{DeliverWebhook, FetchVideo, Round, Unreadable};
use video_import_shared::queue::Topology;
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
    for version in 1..=FetchVideo::VERSION {
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
        // What this binary publishes reads back the same.
        let again = message.outgoing(None, None);
        assert_eq!(FetchVideo::decode(&again.payload).unwrap(), message);
    }
    let newer = br#"{"v": 4, "job_id": "j", "idx": 0}"#;
    assert!(FetchVideo::decode(newer).unwrap_err().is_newer());
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

/// Publishes `body` to the work exchange under `routing_key`, as a binary of another
/// release would.
async fn publish(stack: &Stack, routing_key: &str, body: &Value) {
    let node = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let connection = lapin::Connection::connect(node, Default::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .basic_publish(
            Topology::new(&stack.prefix).exchange().as_str().into(),
            routing_key.into(),
            Default::default(),
            body.to_string().as_bytes(),
            Default::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let _ = connection.close(200, "bye".into()).await;
}

/// Polls the job's first video until `check` accepts it (at most 30 s).
async fn wait_video(
    stack: &Stack,
    token: &str,
    job: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = stack.status(token, job).await;
        if check(&status["videos"][0]) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the video never got there: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
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
    // A message from a newer release: the worker rejects it, and its dead-letter consumer
    // keeps it for a binary that reads it, saying so in the video's status.
    publish(
        &stack,
        "fetch",
        &json!({"v": 99, "job_id": job, "idx": 1, "attempt": 0, "shape": "unknown"}),
    )
    .await;
    // A message of a retired version: its video fails with the reason.
    publish(
        &stack,
        "fetch",
        &json!({"job_id": job, "idx": 0, "attempt": 0}),
    )
    .await;
    let status = wait_video(&stack, &project.token, &job, |v| v["state"] == "failed").await;
    assert_eq!(
        status["videos"][0]["reason"],
        "message version 1 not supported by this binary (it reads 2..3)"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = stack.status(&project.token, &job).await;
        let waiting = status["videos"][1]["lastError"]
            .as_str()
            .unwrap_or_default();
        if waiting.contains("message version 99 not supported by this binary (it reads 2..3)") {
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
    assert!(!log.contains("panicked"), "{log}");
    stack.finish().await;
}
