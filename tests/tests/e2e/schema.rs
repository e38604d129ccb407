//! Every binary checks the database's schema at start: a database never migrated, one that
//! does not exist, and a schema newer than the binary that no longer works with it stop the
//! start with exit code 2 and say what to do; a newer, expand-only schema is run against.

use std::time::Duration;

use video_import_tests::{Options, Stack};

/// Runs `binary` against the stack's configuration with `extra` and returns its exit code and
/// output, stopping it after 10 s if it keeps running (it started: `None`).
async fn start(
    stack: &Stack,
    binary: &str,
    args: &[&str],
    extra: &[(&str, &str)],
) -> (Option<i32>, String) {
    let run = stack.run_binary(binary, args, extra);
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(out) => (out.status.code(), format!("{}{}", out.stdout, out.stderr)),
        Err(_) => (None, String::new()),
    }
}

#[tokio::test]
async fn binaries_refuse_a_schema_they_cannot_run_against_and_say_what_to_do() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let port = video_import_tests::free_port().to_string();
    let metrics = format!("127.0.0.1:{port}");
    let listen = [
        ("VIDEO_IMPORT__METRICS__LISTEN", metrics.as_str()),
        ("VIDEO_IMPORT__API__LISTEN", metrics.as_str()),
    ];

    // A database that does not exist: `migrate` says to create it.
    let missing_db = format!(
        "postgres://postgres@127.0.0.1:5432/{}_absent",
        stack.db_name
    );
    let (code, out) = start(
        &stack,
        "video-import-api",
        &["migrate"],
        &[("VIDEO_IMPORT__DATABASE__URL", missing_db.as_str())],
    )
    .await;
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("does not exist: create it first"), "{out}");

    // A database that was never migrated: every binary stops at once, exit code 2.
    // Its own database, removed by the guard even when an assertion below fails.
    let empty = video_import_tests::Database::create().await;
    for (binary, args) in [
        ("video-import-api", vec!["serve"]),
        ("video-import-worker", vec![]),
        ("video-import-notifier", vec![]),
        ("video-import-api", vec!["token", "list", "--project", "p"]),
    ] {
        let mut extra = listen.to_vec();
        extra.push(("VIDEO_IMPORT__DATABASE__URL", empty.url.as_str()));
        let (code, out) = start(&stack, binary, &args, &extra).await;
        assert_eq!(code, Some(2), "{binary} {args:?}: {out}");
        assert!(
            out.contains("no schema yet: run `video-import-api migrate`"),
            "{binary}: {out}"
        );
    }
    drop(empty);

    // A newer release's expand-only migration: binaries run against it.
    let latest = video_import_shared::store::migrate::latest();
    stack
        .sql(&format!(
            "INSERT INTO schema_migrations (version, breaks_older) VALUES ({}, false)",
            latest + 1
        ))
        .await;
    let (code, out) = start(&stack, "video-import-worker", &[], &listen).await;
    assert_eq!(code, None, "the worker should run: {out}");
    // One that contracts what this release reads: they refuse, naming it.
    stack
        .sql(&format!(
            "INSERT INTO schema_migrations (version, breaks_older) VALUES ({}, true)",
            latest + 2
        ))
        .await;
    for binary in ["video-import-worker", "video-import-notifier"] {
        let (code, out) = start(&stack, binary, &[], &listen).await;
        assert_eq!(code, Some(2), "{binary}: {out}");
        assert!(
            out.contains(&format!(
                "newer than this binary knows ({latest}), and migration {} no longer works with it",
                latest + 2
            )),
            "{binary}: {out}"
        );
        assert!(
            !out.contains("\u{1b}["),
            "no terminal colours in a log: {out}"
        );
    }
    stack.finish().await;
}
