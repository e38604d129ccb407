//! Broker and database restarts in the middle of a batch, on a RabbitMQ node and a
//! PostgreSQL cluster of the test's own: the machine's services are never touched.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use video_import_shared::queue::{self, Outgoing, Publisher, Topology};
use video_import_tests::receiver::Receiver;
use video_import_tests::services::{OwnPostgres, OwnRabbitCluster, OwnRabbitMq};
use video_import_tests::videos::VideoServer;
use video_import_tests::{batch, Batch, Kind, Options, Stack};

/// Runs a blocking service command off the runtime, so the test's servers keep answering.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

/// `n` slow videos (three 1 KiB pieces, `ms` apart) with ids `TAG0`, `TAG1`, … and the
/// receiver's webhook.
fn slow_batch(videos: &VideoServer, receiver: &Receiver, tag: &str, n: usize, ms: u32) -> Batch {
    (0..n).fold(batch("archive").webhook(&receiver.url), |batch, i| {
        let url = videos.url(&format!("/slow/{ms}/sample.mp4?{tag}={i}"));
        batch.video(url, format!("{tag}{i}"))
    })
}

async fn wait_some_imported(stack: &Stack, token: &str, job: &str) {
    let status = stack
        .poll_until("3 videos imported", Duration::from_secs(10), async || {
            let status = stack.status(token, job).await;
            if status["overview"]["imported"].as_i64().unwrap() >= 3 {
                Ok(status)
            } else {
                Err(status["overview"].clone())
            }
        })
        .await;
    assert!(
        status["overview"]["pending"].as_i64().unwrap() > 0,
        "the batch is still under way: {}",
        status["overview"]
    );
}

async fn assert_complete(stack: &Stack, token: &str, job: &str, tag: &str) {
    let status = stack.wait_finished(token, job, 120).await;
    assert_eq!(status["state"], "success", "{status}");
    assert_eq!(status["overview"]["imported"], 30);
    let rows = stack
        .sql(&format!(
            "SELECT count(*), count(DISTINCT external_id) FROM media_entries WHERE external_id LIKE '{tag}%'"
        ))
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), 30, "no entry lost or duplicated");
    assert_eq!(rows[0].get::<_, i64>(1), 30);
}

// Under load this once failed (2 of 9 runs): the dispatcher hung for good in the close of a
// RabbitMQ link the broker had reset, with the publisher's lock held, so the videos not yet
// handed out stayed pending. The close is bounded now (10 of 10 runs pass beside three
// busy loops); `the_publisher_answers_every_call_through_a_broker_restart` covers the
// publisher itself.
#[tokio::test]
async fn rabbitmq_and_postgresql_restarts_lose_and_duplicate_nothing() {
    let postgres = Arc::new(blocking(OwnPostgres::start).await);
    let rabbitmq = Arc::new(blocking(OwnRabbitMq::start).await);
    let stack = Stack::start(Options {
        env: vec![("VIDEO_IMPORT__FETCH__CONCURRENCY".into(), "4".into())],
        postgres_port: postgres.port,
        amqp_url: rabbitmq.url(),
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("restarts").await;

    let job = stack
        .import(
            &project.token,
            &slow_batch(&videos, &receiver, "mq", 30, 100),
        )
        .await;
    wait_some_imported(&stack, &project.token, &job).await;
    let broker = rabbitmq.clone();
    blocking(move || broker.restart(Duration::from_secs(2))).await;
    assert_complete(&stack, &project.token, &job, "mq").await;
    assert!(
        stack
            .log(&stack.running(Kind::Worker)[0].name)
            .contains("consumer lost its broker connection"),
        "the worker saw the broker go and reconnected"
    );
    receiver.wait_for(1, 60).await;

    let job = stack
        .import(
            &project.token,
            &slow_batch(&videos, &receiver, "pg", 30, 100),
        )
        .await;
    wait_some_imported(&stack, &project.token, &job).await;
    let database = postgres.clone();
    blocking(move || database.restart()).await;
    assert_complete(&stack, &project.token, &job, "pg").await;
    receiver.wait_for(2, 60).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 2, "one webhook per job");
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
    blocking(move || drop((postgres, rabbitmq))).await;
}

/// The publisher (the dispatcher's, the relay's and the notifier's link to RabbitMQ) must
/// answer every call while the broker restarts, with an error while it is away, and work
/// again once it is back. It once hung for good: a dropped link's close waited for an
/// answer from a broker that had reset the connection, with the publisher's lock held, and
/// the dispatcher never handed out another video. The race is narrow: this test did not
/// hit it in three runs before the fix (the restart test below did, 2 of 9 runs under
/// load); it guards the publisher's answers and recovery, not that exact race.
#[tokio::test]
async fn the_publisher_answers_every_call_through_a_broker_restart() {
    let rabbitmq = Arc::new(blocking(OwnRabbitMq::start).await);
    let prefix = video_import_tests::unique("vit");
    let publisher = Arc::new(Publisher::new(&rabbitmq.url(), Topology::new(&prefix)));
    publisher.ensure_connected().await.unwrap();
    let message = || Outgoing {
        routing_key: queue::FETCH.into(),
        payload: b"{}".to_vec(),
        delay: None,
        traceparent: None,
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = {
        let (publisher, stop) = (publisher.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut calls, mut failures) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Far above the publisher's own bounds (30 s, then 2 s to close): only a
                // call that never returns reaches it.
                let limit = Duration::from_secs(60);
                let published = tokio::time::timeout(limit, publisher.publish(&[message()]))
                    .await
                    .expect("a publish returned");
                let depth = tokio::time::timeout(limit, publisher.depth(queue::FETCH))
                    .await
                    .expect("a queue-length look returned");
                calls += 1;
                failures += usize::from(published.is_err() || depth.is_err());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (calls, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let broker = rabbitmq.clone();
    blocking(move || broker.restart(Duration::from_secs(2))).await;
    let back = video_import_tests::poll_until(
        "the publisher to work again",
        Duration::from_secs(60),
        async || match publisher.publish(&[message()]).await {
            Ok(()) => publisher
                .depth(queue::FETCH)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls, failures) = calls.await.unwrap();
    assert!(failures > 0, "the restart was seen: {calls} calls");
    assert!(back.ready > 0, "published messages are in the queue");
    let _ = blocking(move || drop(rabbitmq)).await;
}

#[tokio::test]
async fn an_unreachable_database_answers_503_until_it_is_back() {
    let postgres = Arc::new(blocking(OwnPostgres::start).await);
    let stack = Stack::start(Options {
        workers: 0,
        notifier: false,
        postgres_port: postgres.port,
        env: vec![(
            "VIDEO_IMPORT__DATABASE__POOL_TIMEOUT_SECS".into(),
            "2".into(),
        )],
        ..Options::default()
    })
    .await;
    let project = stack.project("down").await;
    let path = "/api/v1/import/videos";
    assert_eq!(stack.get(Some(&project.token), path).await.0, 200);
    let database = postgres.clone();
    blocking(move || database.stop()).await;
    let response = stack
        .http
        .get(format!("{}{path}", stack.api_url))
        .header("authorization", format!("Bearer {}", project.token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert!(body["error_details"]["message"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    let database = postgres.clone();
    blocking(move || database.start_again()).await;
    // The API recovers with the database.
    stack
        .poll_until(
            "the API to answer 200 again",
            Duration::from_secs(10),
            async || match stack.get(Some(&project.token), path).await.0 {
                200 => Ok(()),
                code => Err(code),
            },
        )
        .await;
    stack.finish().await;
    blocking(move || drop(postgres)).await;
}

#[tokio::test]
async fn a_rabbitmq_cluster_loses_a_node_mid_import_and_nothing_is_lost() {
    let cluster = Arc::new(blocking(|| OwnRabbitCluster::start(21_100)).await);
    let mut stack = Stack::start(Options {
        workers: 2,
        amqp_url: cluster.urls.clone(),
        env: vec![("VIDEO_IMPORT__FETCH__CONCURRENCY".into(), "8".into())],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("cluster").await;
    let batch = |tag: &str| slow_batch(&videos, &receiver, tag, 1000, 20);

    // Every process connected to the first node it was given: that node goes away.
    let first = stack.import(&project.token, &batch("one")).await;
    wait_some_imported(&stack, &project.token, &first).await;
    let nodes = cluster.clone();
    blocking(move || nodes.stop_node(1)).await;
    let status = stack.wait_finished(&project.token, &first, 180).await;
    assert_eq!(
        status["overview"]["imported"], 1000,
        "{}",
        status["overview"]
    );
    let nodes = cluster.clone();
    blocking(move || nodes.start_node(1)).await;

    // Then the node leading the fetch queue.
    let second = stack.import(&project.token, &batch("two")).await;
    wait_some_imported(&stack, &project.token, &second).await;
    let fetch = format!("{}.fetch", stack.prefix);
    let nodes = cluster.clone();
    let leader = blocking(move || nodes.leader_of(&fetch, 2))
        .await
        .expect("the fetch queue has a leader");
    let nodes = cluster.clone();
    blocking(move || nodes.stop_node(leader)).await;
    let status = stack.wait_finished(&project.token, &second, 180).await;
    assert_eq!(
        status["overview"]["imported"], 1000,
        "{}",
        status["overview"]
    );

    let rows = stack
        .sql("SELECT count(*), count(DISTINCT external_id) FROM media_entries")
        .await;
    assert_eq!(
        rows[0].get::<_, i64>(0),
        2000,
        "no entry lost or duplicated"
    );
    assert_eq!(rows[0].get::<_, i64>(1), 2000);
    receiver.wait_for(2, 60).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 2, "one webhook per job");
    let exited = stack.exited();
    assert!(exited.is_empty(), "exited: {exited:?}");
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
    blocking(move || drop(cluster)).await;
}
