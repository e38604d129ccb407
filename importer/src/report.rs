//! Following the jobs to the end: their videos' outcomes are summed up, and the failed ones
//! are written to a CSV file with their manifest line, id, URL and reason.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

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

/// Polls every job of `state` until all are finished; writes `failures_path`.
pub async fn follow(
    api: &Api,
    state: &State,
    progress: &Progress,
    manifest: &Path,
    format: Format,
    failures_path: &Path,
) -> anyhow::Result<Report> {
    let mut finished: HashMap<String, serde_json::Value> = HashMap::new();
    loop {
        let mut totals = (0u64, 0u64, 0u64);
        for batch in state.accepted.values() {
            if !finished.contains_key(&batch.job) {
                let status = api
                    .status(&batch.job, progress)
                    .await
                    .map_err(|e| anyhow::anyhow!("reading job {}: {e}", batch.job))?;
                if status["finished"] == true {
                    finished.insert(batch.job.clone(), status);
                    continue;
                }
                let overview = &status["overview"];
                totals.0 += overview["imported"].as_u64().unwrap_or(0);
                totals.1 += overview["skipped"].as_u64().unwrap_or(0);
                totals.2 += overview["failed"].as_u64().unwrap_or(0);
            }
        }
        for status in finished.values() {
            let overview = &status["overview"];
            totals.0 += overview["imported"].as_u64().unwrap_or(0);
            totals.1 += overview["skipped"].as_u64().unwrap_or(0);
            totals.2 += overview["failed"].as_u64().unwrap_or(0);
        }
        progress.finished(totals.0 + totals.1 + totals.2, totals.0, totals.1, totals.2);
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
