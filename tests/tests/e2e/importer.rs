//! The archive importer (`video-import import`) against the real stack: a large manifest
//! with a report, a run killed halfway and resumed, a project over its daily limit, and bad
//! rows named by line.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use video_import_tests::videos::VideoServer;
use video_import_tests::{Options, Stack};

/// Runs `video-import import MANIFEST` with `extra` flags; exit code, stdout, stderr.
async fn import(
    stack: &Stack,
    token: &str,
    manifest: &Path,
    extra: &[&str],
) -> (i32, String, String) {
    let mut command = stack.command("video-import");
    command
        .arg("import")
        .arg(manifest)
        .args([
            "--api",
            &stack.api_url,
            "--token",
            token,
            "--system-name",
            "archive",
        ])
        .args(extra);
    let out = command.output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_large_csv_is_imported_and_failures_are_reported_by_line() {
    let stack = Stack::start(Options {
        workers: 2,
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("archive5k").await;
    let manifest = stack.dir.join("archive.csv");
    let mut csv = String::from("url,id,fileName,metadata.title\n");
    for i in 0..5000 {
        let path = if i % 1000 == 7 {
            "/videos/missing.mp4"
        } else {
            "/videos/sample.mp4"
        };
        csv.push_str(&format!(
            "{}?n={i},v{i},file{i},\"Title, {i}\"\n",
            videos.url(path)
        ));
    }
    std::fs::write(&manifest, csv).unwrap();
    let (code, stdout, stderr) = import(
        &stack,
        &project.token,
        &manifest,
        &["--watch", "--in-flight", "2"],
    )
    .await;
    assert_eq!(code, 1, "five videos failed: {stderr}");
    let report: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{stdout}\n{stderr}"));
    assert_eq!(report["jobs"], 5, "{report}");
    assert_eq!(report["imported"], 4995, "{report}");
    assert_eq!(report["failed"], 5, "{report}");
    let failures = std::fs::read_to_string(report["failures_csv"].as_str().unwrap()).unwrap();
    let lines: Vec<&str> = failures.lines().collect();
    assert_eq!(lines[0], "line,externalId,url,reason");
    assert_eq!(lines.len(), 6, "{failures}");
    // Row v7 is on line 9 of the file (the header is line 1).
    assert!(
        lines[1].starts_with("9,v7,http://127.0.0.1:"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("/videos/missing.mp4?n=7,the server answered 404"),
        "{}",
        lines[1]
    );
    let entry = stack
        .sql("SELECT metadata->>'title' FROM media_entries WHERE external_id = 'v42'")
        .await;
    assert_eq!(entry[0].get::<_, String>(0), "Title, 42");
    stack.finish().await;
}

#[tokio::test]
async fn a_run_killed_halfway_resumes_without_a_second_job_for_any_batch() {
    // One request a second: the run takes long enough to be killed in the middle.
    let stack = Stack::start(Options {
        env: vec![
            (
                "VIDEO_IMPORT__API__RATE_LIMIT_PER_SECOND".into(),
                "1".into(),
            ),
            ("VIDEO_IMPORT__API__RATE_LIMIT_BURST".into(), "1".into()),
        ],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("resume").await;
    let manifest = stack.dir.join("archive.jsonl");
    let rows: Vec<String> = (0..3000)
        .map(|i| {
            json!({"url": videos.url(&format!("/videos/sample.mp4?n={i}")), "id": format!("r{i}"),
                   "fileName": "f", "metadata": {"n": i}})
            .to_string()
        })
        .collect();
    std::fs::write(&manifest, rows.join("\n")).unwrap();
    let state = stack.dir.join("archive.jsonl.video-import-state");
    let mut first = stack.command("video-import");
    first
        .arg("import")
        .arg(&manifest)
        .args([
            "--api",
            &stack.api_url,
            "--token",
            &project.token,
            "--system-name",
            "archive",
        ])
        .args(["--batch-size", "500", "--in-flight", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = first.spawn().unwrap();
    let recorded = stack
        .poll_until(
            "the state file to record 2 batches",
            Duration::from_secs(10),
            async || {
                let recorded = std::fs::read_to_string(&state)
                    .map(|s| s.lines().count().saturating_sub(1))
                    .unwrap_or(0);
                if recorded >= 2 {
                    Ok(recorded)
                } else {
                    Err(format!("{recorded} batches recorded"))
                }
            },
        )
        .await;
    child.kill().await.unwrap();
    assert!(
        (2..6).contains(&recorded),
        "killed after {recorded} of 6 batches"
    );

    let (code, stdout, stderr) = import(
        &stack,
        &project.token,
        &manifest,
        &["--batch-size", "500", "--in-flight", "1", "--watch"],
    )
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stderr.contains("in an earlier run"), "{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["imported"], 3000, "{report}");
    let jobs = stack.sql("SELECT count(*) FROM jobs").await;
    assert_eq!(jobs[0].get::<_, i64>(0), 6, "one job per batch, none twice");
    let entries = stack
        .sql("SELECT count(*), count(DISTINCT external_id) FROM media_entries")
        .await;
    assert_eq!(entries[0].get::<_, i64>(0), 3000);
    assert_eq!(entries[0].get::<_, i64>(1), 3000);
    stack.finish().await;
}

#[tokio::test]
async fn a_project_over_its_daily_limit_waits_and_finishes() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("quota").await;
    let out = stack
        .api_cli(&["project", "update", "quota", "--daily-limit", "10"])
        .await;
    assert!(out.status.success(), "{}", out.stderr);
    // The day's 10 videos were imported 23 h 59 min 56 s ago: room in 4 seconds.
    stack
        .sql(
            "INSERT INTO jobs (id, project_id, system_name, total, pending, state, started_at, finished_at)
             SELECT 'earlier', id, 'archive', 10, 0, 'success',
                    now() - interval '24 hours' + interval '4 seconds', now()
             FROM projects WHERE handle = 'quota'",
        )
        .await;
    let manifest = stack.dir.join("five.csv");
    let mut csv = String::from("url,id,fileName\n");
    for i in 0..5 {
        csv.push_str(&format!(
            "{},q{i},f\n",
            videos.url(&format!("/videos/sample.mp4?q={i}"))
        ));
    }
    std::fs::write(&manifest, csv).unwrap();
    let (code, stdout, stderr) = import(&stack, &project.token, &manifest, &["--watch"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("waiting") && stderr.contains("daily limit"),
        "{stderr}"
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["imported"], 5);
    stack.finish().await;
}

#[tokio::test]
async fn bad_rows_are_named_by_line_before_anything_is_sent() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("badrows").await;
    let manifest = stack.dir.join("bad.csv");
    let good = videos.url("/videos/sample.mp4");
    std::fs::write(
        &manifest,
        format!("url,id,fileName,metadata\n{good},a,f,\n,b,f,\n{good}?2,c,f,\"{{\"\"t\"\":1}}\"\n{good}?3,d,f,not json\n{good}?4,,f,\n"),
    )
    .unwrap();
    let (code, _, stderr) = import(&stack, &project.token, &manifest, &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("line 3: url is empty"), "{stderr}");
    assert!(
        stderr.contains("line 5: metadata is not a JSON object"),
        "{stderr}"
    );
    assert!(stderr.contains("line 6: id is empty"), "{stderr}");
    assert!(
        stack.sql("SELECT 1 FROM jobs").await.is_empty(),
        "nothing was sent"
    );
    // The good rows alone, when asked for.
    let (code, stdout, stderr) = import(
        &stack,
        &project.token,
        &manifest,
        &["--skip-invalid", "--watch"],
    )
    .await;
    assert_eq!(code, 1, "bad rows were left out: {stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["imported"], 2, "{report}");
    stack.finish().await;
}
