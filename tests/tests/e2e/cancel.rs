//! Cancelling stops the downloads: none starts once the job is cancelled (not even of videos
//! that were waiting for their host's slot), and those under way stop.

use std::time::Duration;

use video_import_tests::videos::VideoServer;
use video_import_tests::{batch, files_below, Options, Stack};

#[tokio::test]
async fn a_cancelled_job_starts_no_download_and_stops_those_under_way() {
    let stack = Stack::start(Options {
        env: vec![
            // Eight handlers, two downloads per host: six wait for a slot of the one host.
            ("VIDEO_IMPORT__FETCH__CONCURRENCY".into(), "8".into()),
            (
                "VIDEO_IMPORT__FETCH__PER_HOST_CONCURRENCY".into(),
                "2".into(),
            ),
        ],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("stop").await;
    // Each video takes about 9 s (three pieces, 3 s apart).
    let path = "/slow/3000/sample.mp4";
    let body = (0..100).fold(batch("archive"), |batch, i| {
        batch.video(videos.url(&format!("{path}?n={i}")), format!("s{i}"))
    });
    let job = stack.import(&project.token, &body.build()).await;
    stack
        .poll_until(
            "2 downloads started",
            Duration::from_secs(15),
            async || match videos.hits(path) {
                hits if hits >= 2 => Ok(()),
                hits => Err(format!("{hits} requests")),
            },
        )
        .await;
    let response = stack
        .http
        .post(format!(
            "{}/api/v1/import/videos/{job}/cancel",
            stack.api_url
        ))
        .bearer_auth(&project.token)
        .send()
        .await
        .expect("POST cancel");
    assert_eq!(response.status(), 200);
    let started_before = videos.hits(path);
    // Longer than a slot's download would take, had the cancel not stopped it.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let completed = videos
        .counts()
        .iter()
        .filter(|(label, _)| label.starts_with(&format!("{path}?")) && label.ends_with(" complete"))
        .count();
    assert_eq!(
        videos.hits(path),
        started_before,
        "downloads started after the cancel"
    );
    assert_eq!(completed, 0, "a download under way ran to its end");
    let status = stack.status(&project.token, &job).await;
    assert_eq!(status["overview"]["failed"], 100, "{}", status["overview"]);
    assert!(status["videos"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["reason"] == "cancelled"));
    let entries: i64 = stack.sql("SELECT count(*) FROM media_entries").await[0].get(0);
    assert_eq!(entries, 0);
    // The stopped uploads left nothing but parts the sweeper removes.
    let stored: Vec<String> = files_below(&stack.dir.join("videos"))
        .into_iter()
        .filter(|f| !f.contains('#'))
        .collect();
    assert!(stored.is_empty(), "{stored:?}");
    stack.finish().await;
}
