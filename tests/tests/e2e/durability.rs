//! A stored file is durable before its entry commits: the worker syncs the file and its
//! folders, and a file whose sync fails is never used (the video fails with the reason and
//! no entry points at it). Watched from outside with strace, attached to a running worker.

use std::path::Path;
use std::time::Duration;

use video_import_tests::videos::VideoServer;
use video_import_tests::{batch, files_below, stored_at, Options, Stack};

/// Attaches strace to every thread of process `pid`, tracing `fsync` into `out`, with
/// `extra` options; the returned child detaches when killed.
fn strace(pid: u32, out: &Path, extra: &[&str]) -> tokio::process::Child {
    let mut command = tokio::process::Command::new("strace");
    command
        .args(["-f", "-qq", "-yy", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(out)
        .args(extra)
        .args(["-p", &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
        .spawn()
        .expect("strace (apt-get install strace; deploy/services.sh installs it)")
}

#[tokio::test]
async fn stored_files_are_synced_before_their_entries_commit() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("durable").await;
    let pid = stack.pid("worker0").expect("the worker runs");

    // Synced: every stored file, and its folder, is fsynced by the worker.
    let trace = stack.dir.join("fsync.trace");
    let mut tracer = strace(pid, &trace, &[]);
    // strace prints nothing when it has attached: give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = batch("durable")
        .urls(
            (0..3)
                .map(|i| videos.url(&format!("/videos/sample.mp4?n={i}")))
                .collect::<Vec<_>>(),
        )
        .build();
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    assert_eq!(status["overview"]["imported"], 3, "{status}");
    let _ = tracer.kill().await;
    let traced = std::fs::read_to_string(&trace).unwrap_or_default();
    let root = stack.dir.join("videos");
    for key in stack
        .sql("SELECT asset_key FROM media_entries")
        .await
        .iter()
        .map(|r| r.get::<_, String>(0))
    {
        // Its own file, or the pack it is a range of.
        let file = std::fs::canonicalize(stored_at(&root, &key).0).expect("the stored file");
        let folder = file.parent().unwrap().display().to_string();
        assert!(
            traced.contains(&format!("<{}>", file.display())),
            "no fsync of {}:\n{traced}",
            file.display()
        );
        assert!(
            traced.contains(&format!("<{folder}>")),
            "no fsync of its folder {folder}:\n{traced}"
        );
    }

    // The project's folder is new: its entry in the storage root is synced too.
    let root_path = std::fs::canonicalize(&root).expect("the storage root");
    assert!(
        traced.contains(&format!("<{}>", root_path.display())),
        "no fsync of the storage root {}:\n{traced}",
        root_path.display()
    );

    // Not synced: with every fsync failing (EIO), the video fails with the reason, no entry
    // is written and no file is left.
    let mut tracer = strace(
        pid,
        &stack.dir.join("eio.trace"),
        &["-e", "inject=fsync:error=EIO"],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = files_below(&root).len();
    let body = batch("durable")
        .urls(vec![videos.url("/videos/sample.mp4?unsynced")])
        .build();
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    let _ = tracer.kill().await;
    let reason = status["videos"][0]["reason"].as_str().unwrap_or_default();
    assert_eq!(status["videos"][0]["state"], "failed", "{status}");
    assert!(
        reason.contains("syncing the stored file to disk failed"),
        "{reason}"
    );
    let entries: i64 = stack.sql("SELECT count(*) FROM media_entries").await[0].get(0);
    assert_eq!(entries, 3, "no entry for the unsynced video");
    assert_eq!(
        files_below(&root).len(),
        before,
        "the unsynced file was removed"
    );
    stack.finish().await;
}
