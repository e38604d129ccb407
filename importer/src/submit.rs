//! Cutting the manifest into batches and posting them, a few at a time. Each batch's
//! Idempotency-Key derives from the manifest's content and the batch's position, so the
//! same command run again (after a crash, Ctrl-C, or with a lost answer) never makes a
//! second job of any batch.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::client::{Api, CallError};
use crate::manifest::{self, Format, Row};
use crate::progress::Progress;
use crate::state::{Accepted, State};

/// How many bad rows are listed before the rest are only counted.
const SHOWN_PROBLEMS: usize = 20;

/// `video-import import`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The manifest: CSV (header url,id,fileName and metadata.<key> or metadata columns) or
    /// JSON Lines (one {"url","id","fileName","metadata"} object per line).
    pub manifest: PathBuf,
    /// Base URL of the API, e.g. https://import.example.org
    #[arg(long)]
    pub api: String,
    /// An API token with the public-api:write scope.
    #[arg(long)]
    pub token: String,
    /// The systemName of every video (with each row's id, the media-library key).
    #[arg(long)]
    pub system_name: String,
    /// Called by the service when each batch's job is finished.
    #[arg(long)]
    pub webhook: Option<String>,
    /// The manifest's format, when its extension does not say (.csv, .jsonl).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Videos per batch (at most the server's api.max_batch_size).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Batches posted at once.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Import the good rows and leave out the bad ones (they are listed) instead of stopping.
    #[arg(long)]
    pub skip_invalid: bool,
    /// The state file that lets a re-run resume [default: MANIFEST.video-import-state]
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Follow the jobs until every video is finished, then report.
    #[arg(long)]
    pub watch: bool,
    /// Where --watch writes the failed videos [default: MANIFEST.failures.csv]
    #[arg(long)]
    pub failures: Option<PathBuf>,
}

/// The SHA-256 of the file at `path`, read in pieces.
fn file_sha256(path: &std::path::Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The Idempotency-Key of batch `index`.
fn batch_key(manifest_sha256: &str, batch_size: usize, index: u64) -> String {
    let digest = Sha256::digest(format!("{manifest_sha256}:{batch_size}:{index}"));
    format!("video-import-{}", &hex::encode(digest)[..40])
}

/// The manifest line a field error of a batch is about (`videos[3].url` → its 4th row).
fn line_of(field: &str, lines: &[u64]) -> Option<u64> {
    let index: usize = field
        .strip_prefix("videos[")?
        .split(']')
        .next()?
        .parse()
        .ok()?;
    lines.get(index).copied()
}

/// Runs the import; the exit code says whether every video made it.
pub async fn run(options: Options) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1..=10_000).contains(&options.batch_size),
        "--batch-size must be from 1 to 10000"
    );
    anyhow::ensure!(options.in_flight >= 1, "--in-flight must be at least 1");
    let format = options
        .format
        .or_else(|| Format::guess(&options.manifest))
        .ok_or_else(|| anyhow::anyhow!("cannot tell the manifest's format from its name; pass --format csv or --format jsonl"))?;

    // First pass: every row checked before anything is sent.
    let mut valid = 0u64;
    let mut bad = BTreeSet::new();
    for row in manifest::rows(&options.manifest, format)? {
        match row {
            Ok(_) => valid += 1,
            Err(problem) => {
                if bad.len() < SHOWN_PROBLEMS {
                    eprintln!("line {}: {}", problem.line, problem.problem);
                }
                bad.insert(problem.line);
            }
        }
    }
    if !bad.is_empty() {
        if bad.len() > SHOWN_PROBLEMS {
            eprintln!("… and {} more bad rows", bad.len() - SHOWN_PROBLEMS);
        }
        if !options.skip_invalid {
            eprintln!(
                "{} bad rows: nothing was sent. Fix them, or pass --skip-invalid to import the {valid} good rows.",
                bad.len()
            );
            return Ok(ExitCode::from(2));
        }
        eprintln!("leaving out {} bad rows (--skip-invalid)", bad.len());
    }
    let manifest_sha256 = file_sha256(&options.manifest)?;
    let state_path = options
        .state
        .clone()
        .unwrap_or_else(|| crate::beside(&options.manifest, ".video-import-state"));
    let mut state = State::open(&state_path, &manifest_sha256, options.batch_size)?;
    let api = Api::new(&options.api, &options.token)?;
    let progress = std::sync::Arc::new(Progress::new(valid));

    // Second pass: batches, posted `in_flight` at a time.
    let rows = manifest::rows(&options.manifest, format)?.filter_map(Result::ok);
    // Batches an earlier run got accepted are not sent again.
    let earlier: BTreeSet<u64> = state.accepted.keys().copied().collect();
    for done in state.accepted.values() {
        progress.accepted(done.batch, done.lines.len() as u64, &done.job);
    }
    let skipped_batches = earlier.len();
    let chunks = chunked(rows, options.batch_size);
    let pending = chunks
        .enumerate()
        .map(|(index, rows)| (index as u64, rows))
        .filter(|(index, _)| !earlier.contains(index));
    let submitted = futures::stream::iter(pending)
        .map(|(index, rows): (u64, Vec<Row>)| {
            let api = api.clone();
            let progress = progress.clone();
            let key = batch_key(&manifest_sha256, options.batch_size, index);
            let system_name = options.system_name.clone();
            let webhook = options.webhook.clone();
            // A task per batch: building and sending bodies runs on every core.
            tokio::spawn(async move {
                let mut body = json!({
                    "systemName": system_name,
                    "videos": rows.iter().map(Row::to_video).collect::<Vec<Value>>(),
                });
                if let Some(webhook) = webhook {
                    body["webhook"] = json!(webhook);
                }
                let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
                drop(rows);
                let outcome = api.import(&body, &key, &*progress).await;
                (index, lines, outcome)
            })
        })
        .buffer_unordered(options.in_flight);
    futures::pin_mut!(submitted);
    let mut refused_rows = 0u64;
    let mut failed_batches = 0u64;
    while let Some(joined) = submitted.next().await {
        let (index, lines, outcome) = joined?;
        match outcome {
            Ok(job) => {
                progress.accepted(index, lines.len() as u64, &job);
                state.record(Accepted {
                    batch: index,
                    job,
                    lines,
                })?;
            }
            Err(CallError::Refused { status, body }) => {
                refused_rows += lines.len() as u64;
                let details = body["error_details"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                progress.say(&format!("batch {index} was refused ({status}):"));
                for (field, problem) in details {
                    let place = line_of(&field, &lines)
                        .map_or_else(|| field.clone(), |line| format!("line {line} ({field})"));
                    progress.say(&format!("  {place}: {problem}"));
                }
            }
            Err(CallError::Failed(why)) => {
                failed_batches += 1;
                progress.say(&format!(
                    "batch {index} could not be sent: {why}; run the same command again to resume"
                ));
            }
        }
    }
    let accepted_rows: u64 = state.accepted.values().map(|b| b.lines.len() as u64).sum();
    progress.say(&format!(
        "{} batches accepted ({accepted_rows} videos; {skipped_batches} of them in an earlier run); state in {}",
        state.accepted.len(),
        state.path().display()
    ));
    let complete = refused_rows == 0 && failed_batches == 0 && bad.is_empty();
    if !options.watch {
        progress.done();
        if complete {
            eprintln!("every batch was accepted; pass --watch to follow the jobs to the end");
        }
        return Ok(if complete {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let failures_path = options
        .failures
        .clone()
        .unwrap_or_else(|| crate::beside(&options.manifest, ".failures.csv"));
    let report = crate::report::follow(
        &api,
        &state,
        &progress,
        &options.manifest,
        format,
        &failures_path,
    )
    .await?;
    progress.done();
    println!("{}", serde_json::to_string(&report)?);
    let all_in = complete && report.failed == 0 && report.imported + report.skipped == valid;
    Ok(if all_in {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `rows` in chunks of `size`, lazily.
fn chunked<T>(mut rows: impl Iterator<Item = T>, size: usize) -> impl Iterator<Item = Vec<T>> {
    std::iter::from_fn(move || {
        let chunk: Vec<T> = rows.by_ref().take(size).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_the_manifest_and_the_position_only() {
        let a = batch_key("abc", 1000, 0);
        assert_eq!(a, batch_key("abc", 1000, 0));
        assert_ne!(a, batch_key("abc", 1000, 1));
        assert_ne!(a, batch_key("abd", 1000, 0));
        assert_ne!(a, batch_key("abc", 500, 0));
        assert!(a.len() <= 255);
    }

    #[test]
    fn field_errors_map_to_manifest_lines() {
        let lines = [2, 3, 7];
        assert_eq!(line_of("videos[2].url", &lines), Some(7));
        assert_eq!(line_of("videos[9].url", &lines), None);
        assert_eq!(line_of("systemName", &lines), None);
    }

    #[test]
    fn chunks_are_cut_at_the_size() {
        let chunks: Vec<Vec<u32>> = chunked(0..5, 2).collect();
        assert_eq!(chunks, [vec![0, 1], vec![2, 3], vec![4]]);
    }
}
