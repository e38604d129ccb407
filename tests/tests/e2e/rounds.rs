//! Webhook rounds: a redelivery starts a new round past any attempt still in flight, only
//! an attempt of the current round changes the delivery's state, and each accepted
//! redelivery request sends its round.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use video_import_tests::videos::VideoServer;
use video_import_tests::{Options, Stack};

/// A receiver whose first answer is 500, whose second is 500 after 8 s, and whose others
/// are 200; returns its URL and the count of requests it got.
async fn late_failing_receiver() -> (String, Arc<AtomicUsize>) {
    async fn answer(State(count): State<Arc<AtomicUsize>>) -> StatusCode {
        match count.fetch_add(1, Ordering::SeqCst) {
            0 => StatusCode::INTERNAL_SERVER_ERROR,
            1 => {
                tokio::time::sleep(Duration::from_secs(8)).await;
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::OK,
        }
    }
    let count = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/hook", post(answer))
        .with_state(count.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, count)
}

async fn wait_requests(count: &AtomicUsize, n: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while count.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "the receiver got {} requests, not {n}",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_late_answer_from_before_a_redelivery_cannot_overwrite_it() {
    let stack = Stack::start(Options {
        env: vec![
            // One retry: the late answer to it is the schedule's last.
            (
                "VIDEO_IMPORT__WEBHOOK__RETRY_SCHEDULE_SECS".into(),
                "1".into(),
            ),
            ("VIDEO_IMPORT__WEBHOOK__TIMEOUT_SECS".into(), "20".into()),
        ],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let (url, count) = late_failing_receiver().await;
    let project = stack.project("rounds").await;
    let body = json!({"systemName": "archive", "webhook": url, "videos": [
        {"url": videos.url("/videos/sample.mp4"), "id": "a", "fileName": "a", "metadata": {}}
    ]});
    let job = stack.import(&project.token, &body).await;
    // Attempt 1 failed; attempt 2 hangs for 8 s. Redelivery while it hangs:
    wait_requests(&count, 2, 30).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.redeliver(&project.token, &job).await, 202);
    wait_requests(&count, 3, 15).await;
    let delivered = stack.wait_webhook(&project.token, &job, "delivered").await;
    let delivered_at = delivered["webhook"]["deliveredAt"].clone();
    assert!(delivered_at.is_string(), "{delivered}");
    // The hanging attempt answers 500 about 6 s later; it must change nothing.
    let rows = stack
        .sql(&format!(
            "SELECT count(*) FROM webhook_attempts WHERE job_id = '{job}'"
        ))
        .await;
    let recorded_before: i64 = rows[0].get(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = stack
            .sql(&format!(
                "SELECT count(*) FROM webhook_attempts WHERE job_id = '{job}'"
            ))
            .await;
        if rows[0].get::<_, i64>(0) > recorded_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late attempt was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = stack.status(&project.token, &job).await;
    assert_eq!(status["webhook"]["state"], "delivered", "{status}");
    assert_eq!(status["webhook"]["deliveredAt"], delivered_at, "{status}");
    let rounds = stack
        .sql(&format!(
            "SELECT round, count(*) FROM webhook_attempts WHERE job_id = '{job}'
             GROUP BY round ORDER BY round"
        ))
        .await;
    let per_round: Vec<(i32, i64)> = rounds.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        per_round,
        vec![(1, 2), (2, 1)],
        "two attempts in round 1, one in round 2"
    );

    // Two redeliveries in a row: both accepted, both rounds sent.
    assert_eq!(stack.redeliver(&project.token, &job).await, 202);
    assert_eq!(stack.redeliver(&project.token, &job).await, 202);
    wait_requests(&count, 5, 15).await;
    let status: Value = stack.wait_webhook(&project.token, &job, "delivered").await;
    assert_eq!(status["webhook"]["state"], "delivered");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count.load(Ordering::SeqCst),
        5,
        "one POST per round, no more"
    );
    stack.finish().await;
}
