//! Following the jobs to the end: their videos' outcomes are summed up, and the failed ones
//! are written to a CSV file with their manifest line, id, URL and reason.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::client::Api;
use crate::manifest::{self, Format};
use crate::progress::Progress;
use crate::state::State;

/// What became of the manifest's videos.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub jobs: u64,
    pub imported: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Where the failed videos are listed.
    pub failures_csv: String,
}

/// The counts of every job, and why pending videos wait, at one poll.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub total: u64,
    pub imported: u64,
    pub skipped: u64,
    pub failed: u64,
    pub pending: u64,
    /// Pending videos whose last try failed (or whose source asked for a pause).
    pub waiting: Vec<Waiting>,
}

/// A pending video and the reason it waits (the status's `lastError`).
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub line: u64,
    pub id: String,
    pub why: String,
}

impl Snapshot {
    /// Adds a job's status; `lines` are the manifest lines of its videos.
    pub fn add(&mut self, status: &Value, lines: &[u64]) {
        let overview = &status["overview"];
        let count = |key: &str| overview[key].as_u64().unwrap_or(0);
        self.total += count("total");
        self.imported += count("imported");
        self.skipped += count("skipped");
        self.failed += count("failed");
        self.pending += count("pending");
        for (index, video) in status["videos"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if video["state"] != "pending" {
                continue;
            }
            if let Some(why) = video["lastError"].as_str() {
                self.waiting.push(Waiting {
                    line: lines.get(index).copied().unwrap_or(0),
                    id: video["externalId"].as_str().unwrap_or_default().to_string(),
                    why: why.to_string(),
                });
            }
        }
    }

    /// Videos finished, however they ended.
    pub fn done(&self) -> u64 {
        self.imported + self.skipped + self.failed
    }

    /// The counts as one line.
    pub fn counts(&self) -> String {
        format!(
            "finished {} of {}: imported {}, skipped {}, failed {}, pending {}",
            self.done(),
            self.total,
            self.imported,
            self.skipped,
            self.failed,
            self.pending
        )
    }
}

/// Most waiting videos named at one poll; the others are counted.
const SHOWN_WAITING: usize = 5;

/// What a poll changed: the lines worth showing, nothing when all stayed the same.
#[derive(Debug, Default)]
pub struct Watch {
    counts: Option<(u64, u64, u64, u64, u64)>,
    /// Why each waiting video (by line) waited at the last poll.
    waiting: HashMap<u64, String>,
}

/// The lines one poll shows.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// The counts, when they changed.
    pub counts: Option<String>,
    /// Videos that wait now, or wait for another reason than before.
    pub waiting: Vec<String>,
}

impl Watch {
    /// What changed since the last poll.
    pub fn changes(&mut self, now: &Snapshot) -> Changes {
        let mut changes = Changes::default();
        let counts = (
            now.total,
            now.imported,
            now.skipped,
            now.failed,
            now.pending,
        );
        if self.counts != Some(counts) {
            self.counts = Some(counts);
            changes.counts = Some(now.counts());
        }
        let mut new: Vec<&Waiting> = now
            .waiting
            .iter()
            .filter(|w| self.waiting.get(&w.line) != Some(&w.why))
            .collect();
        new.sort_by_key(|w| w.line);
        let more = new.len().saturating_sub(SHOWN_WAITING);
        changes.waiting = new
            .iter()
            .take(SHOWN_WAITING)
            .map(|w| format!("line {} ({}) waits: {}", w.line, w.id, w.why))
            .collect();
        if more > 0 {
            changes.waiting.push(format!(
                "… and {more} more videos wait; the job status lists them (lastError)"
            ));
        }
        self.waiting = now
            .waiting
            .iter()
            .map(|w| (w.line, w.why.clone()))
            .collect();
        changes
    }
}

/// Polls every job of `state` until all are finished; writes `failures_path`.
pub async fn follow(
    api: &Api,
    state: &State,
    progress: &Progress,
    manifest: &Path,
    format: Format,
    failures_path: &Path,
) -> anyhow::Result<Report> {
    let mut finished: HashMap<String, Value> = HashMap::new();
    let mut watch = Watch::default();
    loop {
        let mut snapshot = Snapshot::default();
        for batch in state.accepted.values() {
            if let Some(status) = finished.get(&batch.job) {
                snapshot.add(status, &batch.lines);
                continue;
            }
            let status = api
                .status(&batch.job, progress)
                .await
                .map_err(|e| anyhow::anyhow!("reading job {}: {e}", batch.job))?;
            snapshot.add(&status, &batch.lines);
            if status["finished"] == true {
                finished.insert(batch.job.clone(), status);
            }
        }
        let changes = watch.changes(&snapshot);
        progress.watched(&snapshot, &changes);
        if finished.len() == state.accepted.len() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let mut report = Report {
        jobs: finished.len() as u64,
        failures_csv: failures_path.display().to_string(),
        ..Report::default()
    };
    // (line, externalId, reason) of every failed video.
    let mut failures: Vec<(u64, String, String)> = Vec::new();
    for batch in state.accepted.values() {
        let status = &finished[&batch.job];
        for (index, video) in status["videos"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            match video["state"].as_str() {
                Some("imported") => report.imported += 1,
                Some("skipped") => report.skipped += 1,
                _ => {
                    report.failed += 1;
                    failures.push((
                        batch.lines.get(index).copied().unwrap_or(0),
                        video["externalId"].as_str().unwrap_or_default().to_string(),
                        video["reason"].as_str().unwrap_or_default().to_string(),
                    ));
                }
            }
        }
    }
    failures.sort();
    // The URLs of the failed rows, from a second read of the manifest.
    let wanted: HashMap<u64, ()> = failures.iter().map(|f| (f.0, ())).collect();
    let mut urls = HashMap::new();
    if !wanted.is_empty() {
        for row in manifest::rows(manifest, format)?.flatten() {
            if wanted.contains_key(&row.line) {
                urls.insert(row.line, row.url);
            }
        }
    }
    let mut writer = csv::Writer::from_path(failures_path)?;
    writer.write_record(["line", "externalId", "url", "reason"])?;
    for (line, id, reason) in &failures {
        let url = urls.get(line).map(String::as_str).unwrap_or_default();
        writer.write_record([line.to_string().as_str(), id, url, reason])?;
    }
    writer.flush()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(pending: u64, imported: u64, last_error: Option<&str>) -> Value {
        let mut videos = vec![json!({"state": "imported", "externalId": "a"}); imported as usize];
        for n in 0..pending {
            let mut video = json!({"state": "pending", "externalId": format!("p{n}")});
            if let Some(why) = last_error {
                video["lastError"] = json!(why);
            }
            videos.push(video);
        }
        json!({"finished": pending == 0, "overview": {"total": pending + imported,
            "imported": imported, "skipped": 0, "failed": 0, "pending": pending},
            "videos": videos})
    }

    fn snapshot(statuses: &[(Value, Vec<u64>)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (status, lines) in statuses {
            snapshot.add(status, lines);
        }
        snapshot
    }

    #[test]
    fn a_poll_that_changes_nothing_shows_nothing() {
        let mut watch = Watch::default();
        let why = "try 1 failed: the server answered 503; trying again in 30 s";
        let waiting = snapshot(&[(status(1, 17, Some(why)), (2..20).collect())]);
        let first = watch.changes(&waiting);
        assert_eq!(
            first.counts.as_deref(),
            Some("finished 17 of 18: imported 17, skipped 0, failed 0, pending 1")
        );
        assert_eq!(first.waiting, [format!("line 19 (p0) waits: {why}")]);
        for _ in 0..284 {
            assert_eq!(watch.changes(&waiting), Changes::default());
        }
        // The next try fails too: a new reason is shown, the counts are not.
        let again = "try 2 failed: the server answered 503; trying again in 120 s";
        let changes = watch.changes(&snapshot(&[(
            status(1, 17, Some(again)),
            (2..20).collect(),
        )]));
        assert_eq!(changes.counts, None);
        assert_eq!(changes.waiting, [format!("line 19 (p0) waits: {again}")]);
        let done = watch.changes(&snapshot(&[(status(0, 18, None), (2..20).collect())]));
        assert_eq!(
            done.counts.as_deref(),
            Some("finished 18 of 18: imported 18, skipped 0, failed 0, pending 0")
        );
        assert!(done.waiting.is_empty());
    }

    #[test]
    fn jobs_are_summed_and_many_waiting_videos_are_counted() {
        let mut watch = Watch::default();
        let now = snapshot(&[
            (status(8, 2, Some("paused")), (1..=10).collect()),
            (status(0, 5, None), (11..=15).collect()),
        ]);
        assert_eq!((now.total, now.imported, now.pending), (15, 7, 8));
        let changes = watch.changes(&now);
        assert_eq!(changes.waiting.len(), SHOWN_WAITING + 1, "{changes:?}");
        assert!(changes.waiting[0].starts_with("line 3 (p0) waits: paused"));
        assert!(changes.waiting[SHOWN_WAITING].starts_with("… and 3 more videos wait"));
        // Pending videos without a failed try are not waiting for anything in particular.
        assert!(snapshot(&[(status(3, 0, None), vec![1, 2, 3])])
            .waiting
            .is_empty());
    }
}
