//! The archive importer (`video-import import`) against the real stack: a large manifest
//! with a report, a run killed halfway and resumed, a project over its daily limit, bad
//! rows named by line (every row the API would refuse, before anything is sent), broken
//! CSV quoting, CRLF manifests, `--watch` while a video waits for a retry, and `retry`.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use video_import_tests::videos::VideoServer;
use video_import_tests::{Options, Stack, TEST_SERVERS};

/// Runs `video-import import MANIFEST` with `extra` flags, admitting the test servers'
/// address as the stack's `fetch.allowed_networks` does; exit code, stdout, stderr.
async fn import(
    stack: &Stack,
    token: &str,
    manifest: &Path,
    extra: &[&str],
) -> (i32, String, String) {
    let mut flags = vec!["--allowed-networks", TEST_SERVERS];
    flags.extend_from_slice(extra);
    import_without_networks(stack, token, manifest, &flags).await
}

/// Runs `video-import import MANIFEST` with `extra` flags only; exit code, stdout, stderr.
async fn import_without_networks(
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
        .args(["--allowed-networks", TEST_SERVERS])
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

/// Whether the stack has no job at all: nothing was sent.
async fn no_jobs(stack: &Stack) -> bool {
    stack.sql("SELECT 1 FROM jobs").await.is_empty()
}

#[tokio::test]
async fn crlf_manifests_name_the_right_lines_in_messages_and_failures_csv() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("crlf").await;
    let good = videos.url("/videos/sample.mp4");
    let missing = videos.url("/videos/missing.mp4");
    // A BOM, CRLF line ends and a title over two lines: row c is on line 5, the bad row on 6.
    let manifest = stack.dir.join("windows.csv");
    std::fs::write(
        &manifest,
        format!(
            "\u{feff}url,id,fileName,metadata.title\r\n{good}?a,a,f,A\r\n{good}?b,b,f,\"two\r\nlines\"\r\n\
             {missing},c,f,C\r\n,d,f,D\r\n"
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = import(
        &stack,
        &project.token,
        &manifest,
        &["--skip-invalid", "--watch"],
    )
    .await;
    assert_eq!(code, 1, "one row left out, one video failed: {stderr}");
    assert!(stderr.contains("line 6: url is empty"), "{stderr}");
    let report: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{stdout}\n{stderr}"));
    assert_eq!(report["imported"], 2, "{report}");
    assert_eq!(report["failed"], 1, "{report}");
    let failures = std::fs::read_to_string(report["failures_csv"].as_str().unwrap()).unwrap();
    let lines: Vec<&str> = failures.lines().collect();
    assert_eq!(lines.len(), 2, "{failures}");
    assert!(lines[1].starts_with("5,c,http://127.0.0.1:"), "{failures}");
    let title = stack
        .sql("SELECT metadata->>'title' FROM media_entries WHERE external_id = 'b'")
        .await;
    assert_eq!(title[0].get::<_, String>(0), "two\r\nlines");
    stack.finish().await;
}

#[tokio::test]
async fn broken_csv_quoting_is_refused_naming_its_line_and_nothing_is_sent() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("quotes").await;
    let good = videos.url("/videos/sample.mp4");

    // A quote opened on line 3 and never closed would swallow lines 4 and 5.
    let unterminated = stack.dir.join("unterminated.csv");
    std::fs::write(
        &unterminated,
        format!("url,id,fileName\n{good}?1,a,f\n{good}?2,b,\"f\n{good}?3,c,f\n{good}?4,d,f\n"),
    )
    .unwrap();
    for extra in [&[][..], &["--skip-invalid"][..]] {
        let (code, _, stderr) = import(&stack, &project.token, &unterminated, extra).await;
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert!(
            stderr.contains("line 3") && stderr.contains("never closed"),
            "{stderr}"
        );
        assert!(stderr.contains("nothing was sent"), "{stderr}");
    }

    // A stray quote: `"bad"quote` is not `badquote`.
    let stray = stack.dir.join("stray.csv");
    std::fs::write(
        &stray,
        format!("url,id,fileName\n{good}?1,a,f\n{good}?2,\"bad\"quote,f\n{good}?3,c,f\n"),
    )
    .unwrap();
    let (code, _, stderr) = import(&stack, &project.token, &stray, &[]).await;
    assert_eq!(code, 2, "{stderr}");
    let column = good.len() + 9;
    assert!(
        stderr.contains(&format!("line 3: id (column {column})")),
        "{stderr}"
    );
    assert!(no_jobs(&stack).await, "nothing was sent");
    stack.finish().await;
}

#[tokio::test]
async fn every_row_the_api_would_refuse_is_reported_before_anything_is_sent() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("precheck").await;
    let good = videos.url("/videos/sample.mp4");
    let video = |url: &str, id: &str, file_name: &str, metadata: Value| {
        json!({"url": url, "id": id, "fileName": file_name, "metadata": metadata}).to_string()
    };
    let rows = [
        video(&format!("{good}?1"), "a", "f", json!({})),
        video(&format!("{good}?2"), "b", "f", json!({})),
        // Line 3 lands in the second batch of two: the API alone would not see it.
        video(&format!("{good}?3"), "a", "f", json!({})),
        video(&format!("{good}?4"), "d", "f", json!({"title": "x\u{0}y"})),
        video("http://10.0.0.1/a.mp4", "e", "f", json!({})),
        video("http://[::1]/a.mp4", "g", "f", json!({})),
        video(&format!("{good}?7"), &"i".repeat(1025), "f", json!({})),
        video(&format!("{good}?8"), "j", &"n".repeat(1025), json!({})),
        video(
            &format!("https://archive.example/{}", "u".repeat(8200)),
            "k",
            "f",
            json!({}),
        ),
        // Over the API's 16 MiB body limit on its own.
        video(
            &format!("{good}?10"),
            "l",
            "f",
            json!({"blob": "b".repeat(16 * 1024 * 1024)}),
        ),
    ];
    let manifest = stack.dir.join("refused.jsonl");
    std::fs::write(&manifest, rows.join("\n")).unwrap();
    let (code, _, stderr) = import(&stack, &project.token, &manifest, &["--batch-size", "2"]).await;
    assert_eq!(code, 2, "{stderr}");
    for expected in [
        "line 3: id \"a\" is also on line 1",
        "line 4: metadata.title contains a NUL character",
        "line 5: url points to 10.0.0.1",
        "line 6: url points to ::1",
        "line 7: id is 1025 bytes long",
        "line 8: fileName is 1025 bytes long",
        "line 9: url is 8224 bytes long",
        "line 10: metadata makes the row",
        "8 bad rows: nothing was sent",
    ] {
        assert!(stderr.contains(expected), "{expected:?} in:\n{stderr}");
    }
    assert!(no_jobs(&stack).await, "nothing was sent");

    // The test servers' own address, too, unless the service's allowed networks are given.
    let (code, _, stderr) = import_without_networks(&stack, &project.token, &manifest, &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("line 1: url points to 127.0.0.1") && stderr.contains("--allowed-networks"),
        "{stderr}"
    );
    assert!(no_jobs(&stack).await, "nothing was sent");

    // The good rows alone, when asked for: the first of the two "a" rows is one of them.
    let (code, stdout, stderr) = import(
        &stack,
        &project.token,
        &manifest,
        &["--batch-size", "2", "--skip-invalid", "--watch"],
    )
    .await;
    assert_eq!(code, 1, "bad rows were left out: {stderr}");
    let report: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{stdout}\n{stderr}"));
    assert_eq!(report["imported"], 2, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    stack.finish().await;
}

#[tokio::test]
async fn watch_prints_a_line_only_when_something_changed_and_says_why_a_video_waits() {
    // The flaky video's first try fails; it is tried again 6 s later (three polls).
    let stack = Stack::start(Options {
        env: vec![("VIDEO_IMPORT__FETCH__RETRY_DELAYS_SECS".into(), "6".into())],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("watch").await;
    let manifest = stack.dir.join("watch.csv");
    std::fs::write(
        &manifest,
        format!(
            "url,id,fileName\n{},w1,f\n{},w2,f\n{},w3,f\n",
            videos.url("/videos/sample.mp4?1"),
            videos.url("/flaky/2/sample.mp4"),
            videos.url("/videos/sample.mp4?3"),
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = import(&stack, &project.token, &manifest, &["--watch"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["imported"], 3, "{report}");
    let progress: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("finished"))
        .collect();
    let distinct: std::collections::BTreeSet<&&str> = progress.iter().collect();
    assert_eq!(distinct.len(), progress.len(), "a line repeated:\n{stderr}");
    assert!(
        progress
            .iter()
            .any(|l| l.contains("of 3") && l.contains("pending 1")),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 3 (w2) waits: try 1 failed")
            && stderr.contains("trying again in 6 s"),
        "{stderr}"
    );
    let waits = stderr.matches("(w2) waits").count();
    assert_eq!(
        waits, 1,
        "the reason is shown once while it stays the same:\n{stderr}"
    );
    stack.finish().await;
}

#[tokio::test]
async fn retry_makes_one_job_of_the_failed_videos_with_the_batches_context() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let receiver = video_import_tests::receiver::Receiver::start(&[]).await;
    let project = stack.project("retries").await;
    let manifest = stack.dir.join("retry.csv");
    let csv = format!(
        "url,id,fileName\n{},good,g\n{},gone,x\n",
        videos.url("/videos/sample.mp4"),
        videos.url("/videos/missing.mp4")
    );
    std::fs::write(&manifest, csv).unwrap();
    let context = r#"{"migration":"tape-42"}"#;
    let (code, _, stderr) = import(
        &stack,
        &project.token,
        &manifest,
        &[
            "--watch",
            "--webhook",
            &receiver.url,
            "--webhook-allowed-networks",
            TEST_SERVERS,
            "--context",
            context,
        ],
    )
    .await;
    assert_eq!(code, 1, "one video failed: {stderr}");
    let hooks = receiver.wait_for(1, 30).await;
    assert_eq!(hooks[0].json()["context"], json!({"migration": "tape-42"}));
    let job: String = stack.sql("SELECT id FROM jobs").await[0].get(0);

    let retry = async || {
        let out = stack
            .command("video-import")
            .args([
                "retry",
                &job,
                "--api",
                &stack.api_url,
                "--token",
                &project.token,
            ])
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let line: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|_| panic!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), line)
    };
    let (code, line) = retry().await;
    assert_eq!(code, Some(0), "{line}");
    assert_eq!(line["job"], job.as_str());
    let retried = line["retry"].as_str().unwrap().to_string();
    let (_, again) = retry().await;
    assert_eq!(
        again["retry"],
        retried.as_str(),
        "run twice: still one retry"
    );
    let status = stack.wait_finished(&project.token, &retried, 30).await;
    assert_eq!(status["retryOf"], job.as_str());
    assert_eq!(status["overview"]["total"], 1);
    assert_eq!(status["videos"][0]["externalId"], "gone");
    let hooks = receiver.wait_for(2, 30).await;
    assert!(hooks
        .iter()
        .all(|h| h.json()["context"] == json!({"migration": "tape-42"})));

    // The retry failed again (the source is still missing): the retry job can be retried
    // in turn, under a key of its own.
    let out = stack
        .command("video-import")
        .args([
            "retry",
            &retried,
            "--api",
            &stack.api_url,
            "--token",
            &project.token,
        ])
        .output()
        .await
        .unwrap();
    let line: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(out.status.code(), Some(0), "{line}");
    assert_ne!(line["retry"], retried.as_str());
    stack.finish().await;
}

#[tokio::test]
async fn manifest_checksums_are_sent_and_a_mismatch_is_reported_by_line() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("fixity-cli").await;
    let sha =
        video_import_tests::videos::sha256(&video_import_tests::videos::fixture("sample.mp4"));
    let manifest = stack.dir.join("fixity.csv");
    let csv = format!(
        "url,id,fileName,sha256\n{},good,g,{sha}\n{},bad,b,{}\n",
        videos.url("/videos/sample.mp4?1"),
        videos.url("/videos/sample.mp4?2"),
        "f".repeat(64)
    );
    std::fs::write(&manifest, csv).unwrap();
    let (code, stdout, stderr) = import(&stack, &project.token, &manifest, &["--watch"]).await;
    assert_eq!(code, 1, "one video failed: {stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{stdout}"));
    assert_eq!(
        (report["imported"].as_i64(), report["failed"].as_i64()),
        (Some(1), Some(1)),
        "{report}"
    );
    let failures = std::fs::read_to_string(report["failures_csv"].as_str().unwrap()).unwrap();
    assert!(
        failures.contains(&format!(
            "checksum mismatch: expected sha256 {}, got {sha}",
            "f".repeat(64)
        )),
        "{failures}"
    );
    assert!(
        failures.lines().nth(1).unwrap().starts_with("3,bad,"),
        "{failures}"
    );
    stack.finish().await;
}

#[tokio::test]
async fn a_bagit_manifest_beside_a_url_list_gives_each_video_its_checksum() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("bagit").await;
    let bytes = video_import_tests::videos::fixture("sample.mp4");
    let sha = video_import_tests::videos::sha256(&bytes);
    let list = stack.dir.join("urls.csv");
    std::fs::write(
        &list,
        format!(
            "url,id,fileName\n{},kept,k\n{},damaged,d\n",
            videos.url("/videos/sample.mp4"),
            videos.url("/padded/1/sample.mp4")
        ),
    )
    .unwrap();
    // The bag's manifest: the second file's entry is the sample's, not the padded copy's.
    let bag = stack.dir.join("bag");
    std::fs::create_dir_all(&bag).unwrap();
    let manifest = bag.join("manifest-sha256.txt");
    std::fs::write(
        &manifest,
        format!("{sha}  data/videos/sample.mp4\n{sha}  data/padded/1/sample.mp4\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = import(
        &stack,
        &project.token,
        &list,
        &["--watch", "--bagit-manifest", manifest.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 1, "the damaged copy failed: {stderr}");
    assert!(stderr.contains("2 rows have a checksum"), "{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{stdout}"));
    assert_eq!(
        (report["imported"].as_i64(), report["failed"].as_i64()),
        (Some(1), Some(1)),
        "{report}"
    );
    let failures = std::fs::read_to_string(report["failures_csv"].as_str().unwrap()).unwrap();
    assert!(
        failures.contains(&format!("checksum mismatch: expected sha256 {sha}")),
        "{failures}"
    );
    let entry = stack
        .sql("SELECT sha256 FROM media_entries WHERE external_id = 'kept'")
        .await;
    assert_eq!(entry[0].get::<_, String>(0), sha);
    stack.finish().await;
}
