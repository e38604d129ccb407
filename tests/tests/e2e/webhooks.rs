//! Webhook delivery: independent signature checks, secret rotation, retries, 410, Retry-After,
//! redelivery on demand and isolation from slow receivers.

use std::time::Duration;

use serde_json::{json, Value};
use video_import_tests::receiver::Receiver;
use video_import_tests::videos::VideoServer;
use video_import_tests::{
    batch, free_port, poll_until, Batch, Options, Proc, Stack, NO_TEST_SERVERS,
};

fn one_video(videos: &VideoServer, webhook: &str) -> Batch {
    batch("archive")
        .webhook(webhook)
        .context(json!({"batch": 7}))
        .video_with(videos.url("/videos/sample.mp4"), "a", "a", json!({}))
}

/// Starts `deploy/webhook-receiver.py`, which answers 204 only when Python's `hmac`
/// verifies the signature; returns its URL and the file it writes.
fn python_receiver(
    stack: &Stack,
    secret: &str,
) -> (String, std::path::PathBuf, tokio::process::Child) {
    let port = free_port();
    let out = stack.dir.join(format!("python-{port}.jsonl"));
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/webhook-receiver.py");
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .arg(secret)
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    (format!("http://127.0.0.1:{port}/hook"), out, child)
}

async fn wait_listening(url: &str) {
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let what = format!("{url} to listen");
    poll_until(&what, Duration::from_secs(5), async || {
        tokio::net::TcpStream::connect(&addr).await.map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn python_hmac_verifies_the_signature_before_and_during_a_secret_rotation() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("pysig").await;
    let (old_url, old_out, _old) = python_receiver(&stack, &project.secret);
    wait_listening(&old_url).await;

    let job = stack
        .import(&project.token, &one_video(&videos, &old_url))
        .await;
    let status = stack.wait_webhook(&project.token, &job, "delivered").await;
    assert_eq!(
        status["webhook"]["attempts"], 1,
        "Python accepted the first attempt"
    );
    let line = std::fs::read_to_string(&old_out).unwrap();
    let record: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(record["verified"], true);

    // Rotate: deliveries now carry signatures with the new and the old secret.
    let out = stack.api_cli(&["project", "rotate-secret", "pysig"]).await;
    assert!(out.status.success(), "{}", out.stderr);
    let rotated: Value = serde_json::from_str(&out.stdout).unwrap();
    let new_secret = rotated["webhookSecret"].as_str().unwrap().to_string();
    assert!(new_secret.starts_with("whsec_") && new_secret != project.secret);
    let (new_url, new_out, _new) = python_receiver(&stack, &new_secret);
    wait_listening(&new_url).await;
    let receiver = Receiver::start(&[]).await;

    for url in [&old_url, &new_url, &receiver.url] {
        let job = stack.import(&project.token, &one_video(&videos, url)).await;
        let status = stack.wait_webhook(&project.token, &job, "delivered").await;
        assert_eq!(
            status["webhook"]["attempts"], 1,
            "{url} verified the first attempt"
        );
    }
    for out in [&old_out, &new_out] {
        let text = std::fs::read_to_string(out).unwrap();
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["verified"], true, "{}", out.display());
    }
    let hook = &receiver.received()[0];
    assert_eq!(hook.header("webhook-signature").split(' ').count(), 2);
    assert!(hook.signature_valid(&project.secret));
    assert!(hook.signature_valid(&new_secret));
    stack.finish().await;
}

#[tokio::test]
async fn a_410_stops_retrying_and_redelivery_sends_the_same_webhook_id_again() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[410]).await;
    let project = stack.project("gone").await;
    let job = stack
        .import(&project.token, &one_video(&videos, &receiver.url))
        .await;
    let status = stack.wait_webhook(&project.token, &job, "failed").await;
    assert_eq!(status["webhook"]["attempts"], 1);
    assert!(status["webhook"]["lastError"]
        .as_str()
        .unwrap()
        .contains("410 Gone"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 1, "no retry after 410");

    // Redeliver on demand: a new round, same webhook-id.
    assert_eq!(stack.redeliver(&project.token, &job).await, 202);
    let hooks = receiver.wait_for(2, 30).await;
    assert_eq!(hooks[1].header("webhook-id"), hooks[0].header("webhook-id"));
    assert_eq!(hooks[1].json()["id"], job);
    let status = stack.wait_webhook(&project.token, &job, "delivered").await;
    assert_eq!(status["webhook"]["attempts"], 2);

    // And again after success.
    assert_eq!(stack.redeliver(&project.token, &job).await, 202);
    receiver.wait_for(3, 30).await;

    // A job without a webhook, and someone else's job.
    let plain = stack
        .import(
            &project.token,
            &batch("a").video_with(videos.url("/videos/sample.mp4"), "b", "b", json!({})),
        )
        .await;
    stack.wait_finished(&project.token, &plain, 30).await;
    assert_eq!(stack.redeliver(&project.token, &plain).await, 409);
    let other = stack.project("other").await;
    assert_eq!(stack.redeliver(&other.token, &job).await, 404);
    // The refused first delivery and both redeliveries: each signed.
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}

#[tokio::test]
async fn retry_after_from_the_receiver_is_honoured() {
    // A Retry-After is honoured up to the schedule's longest delay (here 5 s).
    let stack = Stack::start(Options {
        env: vec![(
            "VIDEO_IMPORT__WEBHOOK__RETRY_SCHEDULE_SECS".into(),
            "1,1,5".into(),
        )],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    // The schedule says 1 s; the receiver asks for 3 s.
    let receiver = Receiver::start_with(&[429], Some(3), None).await;
    let project = stack.project("later").await;
    let job = stack
        .import(&project.token, &one_video(&videos, &receiver.url))
        .await;
    stack.wait_webhook(&project.token, &job, "delivered").await;
    let hooks = receiver.received();
    assert_eq!(hooks.len(), 2);
    let gap = (hooks[1].at - hooks[0].at).as_secs_f64();
    assert!(
        gap >= 3.0,
        "second attempt came {gap:.2} s after the first; Retry-After asked for 3 s"
    );
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}

#[tokio::test]
async fn webhooks_to_private_addresses_are_refused_without_retries() {
    let mut stack = Stack::start(Options {
        env: vec![(
            "VIDEO_IMPORT__WEBHOOK__ALLOWED_NETWORKS".into(),
            NO_TEST_SERVERS.into(),
        )],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("ssrfhook").await;
    // IP literals, however spelled, are refused at the door.
    let mapped = receiver.url.replace("127.0.0.1", "[::ffff:127.0.0.1]");
    let sixtofour = receiver.url.replace("127.0.0.1", "[2002:7f00:1::]");
    for webhook in [receiver.url.as_str(), &mapped, &sixtofour] {
        let (code, body) = stack
            .import_raw(
                Some(&project.token),
                &one_video(&videos, webhook).build().to_string(),
            )
            .await;
        assert_eq!(code, 400, "{webhook}: {body}");
        let message = body["error_details"]["webhook"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("webhook.allowed_networks"), "{body}");
    }
    // A name that resolves to a refused address fails at once, without retries.
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let job = stack
        .import(&project.token, &one_video(&videos, &by_name))
        .await;
    let status = stack.wait_webhook(&project.token, &job, "failed").await;
    assert_eq!(status["webhook"]["attempts"], 1, "{status}");
    let error = status["webhook"]["lastError"].as_str().unwrap();
    assert!(
        error.starts_with("refused to connect to localhost"),
        "{error}"
    );
    // The notifier checks literals itself too: an API configured more loosely lets one in.
    let loose = stack
        .spawn_api(
            "api-loose",
            &[("VIDEO_IMPORT__WEBHOOK__ALLOW_PRIVATE_NETWORKS", "true")],
        )
        .await;
    let accepted: Value = stack
        .http
        .post(format!("{loose}/api/v1/import/videos"))
        .bearer_auth(&project.token)
        .json(&one_video(&videos, &mapped))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = accepted["id"].as_str().unwrap();
    let status = stack.wait_webhook(&project.token, job, "failed").await;
    assert_eq!(status["webhook"]["attempts"], 1, "{status}");
    let error = status["webhook"]["lastError"].as_str().unwrap();
    assert!(error.starts_with("refused to"), "{error}");
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
    stack.finish().await;
}

#[tokio::test]
async fn a_dead_lettered_webhook_fails_with_the_reason() {
    // After its first attempt fails, the delivery waits a minute for the next.
    let stack = Stack::start(Options {
        env: vec![(
            "VIDEO_IMPORT__WEBHOOK__RETRY_SCHEDULE_SECS".into(),
            "60".into(),
        )],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[503]).await;
    let project = stack.project("deadhook").await;
    let job = stack
        .import(&project.token, &one_video(&videos, &receiver.url))
        .await;
    receiver.wait_for(1, 30).await;
    stack.wait_webhook(&project.token, &job, "pending").await;
    let status = stack
        .poll_until(
            "the first attempt recorded",
            Duration::from_secs(10),
            async || {
                let status = stack.status(&project.token, &job).await;
                if status["webhook"]["attempts"] == 1 {
                    Ok(status)
                } else {
                    Err(status)
                }
            },
        )
        .await;
    assert_eq!(status["webhook"]["state"], "pending", "{status}");
    assert_eq!(status["webhook"]["attempts"], 1, "{status}");
    // The broker sets the retry aside, as after too many deliveries: the notifier settles it.
    stack
        .dead_letter(
            "webhook",
            &json!({"v": 3, "job_id": job, "round": 1, "attempt": 2, "url": receiver.url}),
        )
        .await;
    let status = stack.wait_webhook(&project.token, &job, "failed").await;
    let error = status["webhook"]["lastError"].as_str().unwrap();
    assert!(
        error.starts_with("set aside (dead-lettered) after 20 deliveries"),
        "{error}"
    );
    stack.finish().await;
}

#[tokio::test]
async fn a_hanging_receiver_does_not_hold_up_deliveries_to_others() {
    let stack = Stack::start(Options {
        env: vec![
            ("VIDEO_IMPORT__WEBHOOK__CONCURRENCY".into(), "4".into()),
            (
                "VIDEO_IMPORT__WEBHOOK__PER_HOST_CONCURRENCY".into(),
                "2".into(),
            ),
            ("VIDEO_IMPORT__WEBHOOK__TIMEOUT_SECS".into(), "20".into()),
        ],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let hanging = Receiver::start_with(&[], None, Some(Duration::from_secs(15))).await;
    let healthy = Receiver::start(&[]).await;
    let project = stack.project("hol").await;
    // More webhooks to the hanging receiver than the notifier has slots.
    let mut stuck = Vec::new();
    for _ in 0..6 {
        stuck.push(
            stack
                .import(&project.token, &one_video(&videos, &hanging.url))
                .await,
        );
    }
    for job in &stuck {
        stack.wait_finished(&project.token, job, 30).await;
    }
    hanging.wait_for(2, 30).await;

    let job = stack
        .import(&project.token, &one_video(&videos, &healthy.url))
        .await;
    let hooks = healthy.wait_for(1, 30).await;
    assert_eq!(hooks[0].json()["id"], job);
    // Delivered while every request to the hanging receiver was still open.
    let ended = stack
        .sql(&format!(
            "SELECT count(*) FROM webhook_attempts WHERE job_id <> '{job}'"
        ))
        .await;
    assert_eq!(
        ended[0].get::<_, i64>(0),
        0,
        "no attempt to the hanging receiver had ended yet"
    );
    assert_eq!(
        hanging.received().len(),
        2,
        "the hanging host gets at most its two slots"
    );
    assert!(hanging.max_in_flight() <= 2);
    healthy.assert_all_signed_by(&project.secret);
    hanging.assert_all_signed_by(&project.secret);
    stack.finish().await;
}

/// A counter of a binary's metrics endpoint.
async fn counter(stack: &Stack, process: &Proc, name: &str) -> f64 {
    let text = stack.metrics(&process.metrics_address()).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

async fn held(stack: &Stack) -> i64 {
    stack
        .sql("SELECT count(*) FROM webhook_deliveries WHERE held_host IS NOT NULL")
        .await[0]
        .get(0)
}

#[tokio::test]
async fn a_dead_receivers_deliveries_are_held_and_all_go_out_once_it_answers() {
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut stack = Stack::start(Options {
        notifier: false,
        env: vec![
            env("VIDEO_IMPORT__WEBHOOK__PER_HOST_CONCURRENCY", "2"),
            env("VIDEO_IMPORT__WEBHOOK__TIMEOUT_SECS", "2"),
            env(
                "VIDEO_IMPORT__WEBHOOK__RETRY_SCHEDULE_SECS",
                "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
            ),
        ],
        ..Options::default()
    })
    .await;
    let notifier = stack.spawn_notifier().await;
    let videos = VideoServer::start().await;
    let dead = Receiver::start_with(&[], None, Some(Duration::from_secs(3600))).await;
    let project = stack.project("held").await;
    let mut jobs = Vec::new();
    for _ in 0..20 {
        jobs.push(
            stack
                .import(&project.token, &one_video(&videos, &dead.url))
                .await,
        );
    }
    stack
        .poll_until(
            "15 deliveries held",
            Duration::from_secs(30),
            async || match held(&stack).await {
                n if n >= 15 => Ok(()),
                n => Err(format!("{n} held")),
            },
        )
        .await;
    // While the host has no free slot its deliveries stay held: they are published again
    // only as its two slots free up (each slot's request times out after 2 s).
    let (requests, released) = (
        dead.received().len(),
        counter(&stack, &notifier, "video_import_webhook_releases_total").await,
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let requests = dead.received().len() - requests;
    let released =
        counter(&stack, &notifier, "video_import_webhook_releases_total").await - released;
    assert!(
        requests <= 8,
        "{requests} requests in 4 s to a host with two slots"
    );
    assert!(
        released <= 2.0 * requests as f64 + 4.0,
        "{released} held deliveries were published again for {requests} requests"
    );
    assert!(held(&stack).await >= 12, "most deliveries stay held");

    // The notifier dies with deliveries held. Jobs that finish meanwhile for the same
    // receiver get their deliveries held at once, without a message (no notifier runs to
    // hold them). Another notifier delivers them all once the receiver answers again, each
    // with its own webhook id.
    stack.kill(&notifier.name).await;
    let before = held(&stack).await;
    for _ in 0..5 {
        let job = stack
            .import(&project.token, &one_video(&videos, &dead.url))
            .await;
        stack.wait_finished(&project.token, &job, 30).await;
    }
    assert_eq!(held(&stack).await, before + 5, "created held");
    dead.set_hang(None);
    stack.spawn_notifier().await;
    stack
        .poll_until(
            "25 deliveries delivered",
            Duration::from_secs(60),
            async || {
                let delivered: i64 = stack
                    .sql("SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'")
                    .await[0]
                    .get(0);
                match delivered {
                    25 => Ok(()),
                    n => Err(format!("{n} of 25 delivered")),
                }
            },
        )
        .await;
    let ids: std::collections::HashSet<String> = dead
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert_eq!(ids.len(), 25, "one webhook id per job");
    assert_eq!(held(&stack).await, 0);
    // Waiting for a slot is not an attempt: no delivery used up its retries.
    let most: i32 = stack
        .sql("SELECT max(attempts) FROM webhook_deliveries")
        .await[0]
        .get(0);
    assert!(most < 30, "{most} attempts");
    // Held and released deliveries, and the ones a second notifier sent, are all signed.
    dead.assert_all_signed_by(&project.secret);
    stack.finish().await;
}
