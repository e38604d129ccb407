//! Cutting the manifest into batches and posting them, a few at a time. Each batch's
//! Idempotency-Key derives from the manifest's content and the batch's position, so the
//! same command run again (after a crash, Ctrl-C, or with a lost answer) never makes a
//! second job of any batch.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use futures::StreamExt;
use ipnet::IpNet;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::bagit::Fixity;
use crate::check::{self, Checker, Networks, Rules};
use crate::client::{Api, CallError};
use crate::manifest::{self, Format, Row};
use crate::progress::Progress;
use crate::state::{Accepted, State};

/// How many problems of bad rows are listed before the rest are only counted.
const SHOWN_PROBLEMS: usize = 20;

/// Networks given on the command line: comma-separated CIDRs.
#[derive(Debug, Clone)]
pub struct NetList(pub Vec<IpNet>);

fn parse_networks(text: &str) -> Result<NetList, String> {
    text.split(',')
        .map(str::trim)
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            piece.parse::<IpNet>().map_err(|_| {
                format!("{piece:?} is not a network in CIDR notation, e.g. 10.20.0.0/16 or 127.0.0.1/32")
            })
        })
        .collect::<Result<_, _>>()
        .map(NetList)
}

/// The largest context the service takes.
const MAX_CONTEXT_BYTES: usize = 8192;

fn parse_context(text: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        format!("is not JSON ({e}); pass an object such as '{{\"batch\":\"tape-42\"}}'")
    })?;
    if !value.is_object() {
        return Err("must be a JSON object, such as '{\"batch\":\"tape-42\"}'".into());
    }
    let bytes = serde_json::to_vec(&value).map_or(0, |b| b.len());
    if bytes > MAX_CONTEXT_BYTES {
        return Err(format!(
            "is {bytes} bytes; the service takes at most {MAX_CONTEXT_BYTES}"
        ));
    }
    Ok(value)
}

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
    /// A BagIt payload manifest (manifest-sha256.txt or manifest-md5.txt, repeatable): its
    /// checksums go with the rows whose URL path ends with the manifest's path (without
    /// the bag's data/).
    #[arg(long, value_name = "FILE")]
    pub bagit_manifest: Vec<PathBuf>,
    /// A JSON object sent back verbatim in every batch's webhook (at most 8192 bytes), e.g.
    /// '{"migration":"tape-42"}'.
    #[arg(long, value_name = "JSON", value_parser = parse_context)]
    pub context: Option<Value>,
    /// The manifest's format, when its extension does not say (.csv, .jsonl).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Videos per batch (at most the service's api.max_batch_size, 1000 unless its operator
    /// changed it).
    #[arg(long, default_value_t = check::DEFAULT_MAX_BATCH_SIZE)]
    pub batch_size: usize,
    /// The service's api.max_body_bytes: batches are cut to stay below it, and a row too
    /// large for any batch is refused before anything is sent.
    #[arg(long, default_value_t = check::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Networks the service admits for video URLs that are IP literals (its
    /// fetch.allowed_networks): comma-separated CIDRs. Other private, loopback, link-local
    /// and reserved addresses are refused before anything is sent, as the service would.
    #[arg(long, value_name = "CIDRS", env = "VIDEO_IMPORT__FETCH__ALLOWED_NETWORKS", value_parser = parse_networks)]
    pub allowed_networks: Vec<NetList>,
    /// The same for --webhook (the service's webhook.allowed_networks).
    #[arg(long, value_name = "CIDRS", env = "VIDEO_IMPORT__WEBHOOK__ALLOWED_NETWORKS", value_parser = parse_networks)]
    pub webhook_allowed_networks: Vec<NetList>,
    /// Do not refuse private addresses up front: the service allows them
    /// (fetch.allow_private_networks, webhook.allow_private_networks).
    #[arg(long)]
    pub allow_private_networks: bool,
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

/// What a refusal says, one line per problem, by manifest line where the API names a video:
/// field errors (`videos[3].url`) and metadata errors (`errors[].index`).
fn refusal_lines(body: &Value, lines: &[u64]) -> Vec<String> {
    let details = &body["error_details"];
    if let Some(errors) = details["errors"].as_array() {
        return errors
            .iter()
            .map(|e| {
                let field = match e["metadataProperty"].as_str() {
                    Some(p) if !p.is_empty() => format!("metadata.{p}"),
                    _ => "metadata".to_string(),
                };
                let message = e["message"].as_str().unwrap_or_default();
                match e["index"].as_u64().and_then(|i| lines.get(i as usize)) {
                    Some(line) => format!("line {line} ({field}): {message}"),
                    None => format!("{field}: {message}"),
                }
            })
            .collect();
    }
    match details.as_object() {
        Some(fields) if !fields.is_empty() => fields
            .iter()
            .map(|(field, problem)| {
                let problem = problem
                    .as_str()
                    .map_or_else(|| problem.to_string(), str::to_string);
                let place = line_of(field, lines)
                    .map_or_else(|| field.clone(), |line| format!("line {line} ({field})"));
                format!("{place}: {problem}")
            })
            .collect(),
        _ => vec![body.to_string()],
    }
}

/// When a refusal says that every batch is too large for the service: what to do instead.
fn limit_hint(status: u16, body: &Value, options: &Options) -> Option<String> {
    if status == 413 {
        return Some(format!(
            "the service takes smaller requests than --max-body-bytes {}: pass its \
             api.max_body_bytes as --max-body-bytes and run the command again; no further \
             batches are sent",
            options.max_body_bytes
        ));
    }
    let message = body["error_details"]["videos"].as_str()?;
    let most = message.split("at most ").nth(1)?;
    let most: usize = most
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(format!(
        "the service takes at most {most} videos in a batch: run the command again with \
         --batch-size {most}; no further batches are sent"
    ))
}

/// How many rows a batch has and its first and last line: enough to tell that a state
/// file's batch is not the one this run cuts.
fn shape(lines: &[u64]) -> (usize, Option<u64>, Option<u64>) {
    (lines.len(), lines.first().copied(), lines.last().copied())
}

/// Runs the import; the exit code says whether every video made it.
pub async fn run(options: Options) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1..=10_000).contains(&options.batch_size),
        "--batch-size must be from 1 to 10000"
    );
    anyhow::ensure!(options.in_flight >= 1, "--in-flight must be at least 1");
    anyhow::ensure!(
        options.max_body_bytes >= 1024,
        "--max-body-bytes must be at least 1024"
    );
    let format = options
        .format
        .or_else(|| Format::guess(&options.manifest))
        .ok_or_else(|| anyhow::anyhow!("cannot tell the manifest's format from its name; pass --format csv or --format jsonl"))?;

    // First pass: every row checked before anything is sent.
    let networks = |lists: &[NetList]| Networks {
        allow_private: options.allow_private_networks,
        allowed: lists.iter().flat_map(|l| l.0.iter().copied()).collect(),
    };
    let rules = Rules {
        videos: networks(&options.allowed_networks),
        webhook: networks(&options.webhook_allowed_networks),
        max_body_bytes: options.max_body_bytes,
    };
    let mut checker = match Checker::new(
        rules,
        &options.system_name,
        options.webhook.as_deref(),
        options.context.as_ref(),
    ) {
        Ok(checker) => checker,
        Err(problems) => {
            for problem in problems {
                eprintln!("{problem}");
            }
            eprintln!("nothing was sent: fix the options above and run the command again");
            return Ok(ExitCode::from(2));
        }
    };
    let fixity = Fixity::read(&options.bagit_manifest)?;
    let mut valid = 0u64;
    let mut with_fixity = 0u64;
    let mut bad = BTreeSet::new();
    let mut problems_seen = 0usize;
    for row in manifest::rows(&options.manifest, format)? {
        let (line, problems, ends_reading) = match row {
            Ok(mut row) => {
                let mut problems = fixity.apply(&mut row);
                with_fixity += u64::from(!row.checksum.is_empty());
                problems.extend(checker.check(&row));
                if problems.is_empty() {
                    valid += 1;
                    continue;
                }
                (row.line, problems, false)
            }
            Err(bad) => (bad.line, bad.problems, bad.ends_reading),
        };
        for problem in &problems {
            if problems_seen < SHOWN_PROBLEMS {
                eprintln!("line {line}: {problem}");
            }
            problems_seen += 1;
        }
        bad.insert(line);
        if ends_reading {
            eprintln!(
                "the manifest cannot be read past line {line}: nothing was sent. Fix it and run the same command again."
            );
            return Ok(ExitCode::from(2));
        }
    }
    let envelope = checker.envelope();
    drop(checker);
    if !fixity.is_empty() {
        eprintln!("{with_fixity} rows have a checksum (from the manifest or the BagIt manifests)");
    }
    if !bad.is_empty() {
        if problems_seen > SHOWN_PROBLEMS {
            eprintln!("… and {} more problems", problems_seen - SHOWN_PROBLEMS);
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
    // The BagIt manifests change the batches' bodies: they are part of what the keys name.
    let mut manifest_sha256 = file_sha256(&options.manifest)?;
    if !options.bagit_manifest.is_empty() {
        let mut hasher = Sha256::new();
        hasher.update(manifest_sha256.as_bytes());
        for path in &options.bagit_manifest {
            hasher.update(file_sha256(path)?.as_bytes());
        }
        manifest_sha256 = hex::encode(hasher.finalize());
    }
    let state_path = options
        .state
        .clone()
        .unwrap_or_else(|| crate::beside(&options.manifest, ".video-import-state"));
    let mut state = State::open(&state_path, &manifest_sha256, options.batch_size)?;
    let api = Api::new(&options.api, &options.token)?;
    let progress = std::sync::Arc::new(Progress::new(valid));

    // Second pass: batches, posted `in_flight` at a time.
    let rows = manifest::rows(&options.manifest, format)?
        .filter_map(Result::ok)
        .filter(|row| !bad.contains(&row.line))
        .map(|mut row| {
            fixity.apply(&mut row);
            row
        });
    // Batches an earlier run got accepted are not sent again.
    let earlier: BTreeMap<u64, _> = state
        .accepted
        .iter()
        .map(|(index, done)| (*index, shape(&done.lines)))
        .collect();
    for done in state.accepted.values() {
        progress.accepted(done.batch, done.lines.len() as u64, &done.job);
    }
    let skipped_batches = earlier.len();
    // An earlier batch cut otherwise than this run cuts it, and whether a refusal said that
    // no batch will do: either stops the sending.
    let mismatch = Cell::new(None);
    let stop = Cell::new(false);
    let pending = batches(rows, options.batch_size, options.max_body_bytes, envelope)
        .enumerate()
        .map(|(index, rows)| (index as u64, rows))
        .filter(|(index, rows)| match earlier.get(index) {
            Some(done) => {
                let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
                if *done != shape(&lines) {
                    mismatch.set(Some(*index));
                }
                false
            }
            None => true,
        })
        .take_while(|_| mismatch.get().is_none() && !stop.get());
    let submitted = futures::stream::iter(pending)
        .map(|(index, rows): (u64, Vec<Row>)| {
            let api = api.clone();
            let progress = progress.clone();
            let key = batch_key(&manifest_sha256, options.batch_size, index);
            let system_name = options.system_name.clone();
            let webhook = options.webhook.clone();
            let context = options.context.clone();
            // A task per batch: building and sending bodies runs on every core.
            tokio::spawn(async move {
                let mut body = json!({
                    "systemName": system_name,
                    "videos": rows.iter().map(Row::to_video).collect::<Vec<Value>>(),
                });
                if let Some(webhook) = webhook {
                    body["webhook"] = json!(webhook);
                }
                if let Some(context) = context {
                    body["context"] = context;
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
                progress.say(&format!("batch {index} was refused ({status}):"));
                for line in refusal_lines(&body, &lines) {
                    progress.say(&format!("  {line}"));
                }
                if let Some(hint) = limit_hint(status, &body, &options) {
                    stop.set(true);
                    progress.say(&hint);
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
    if let Some(index) = mismatch.get() {
        progress.done();
        anyhow::bail!(
            "the state file {} records batch {index} with other rows than this run puts in it \
             (were --batch-size, --max-body-bytes or --skip-invalid different, or the manifest \
             read by an older video-import?): run the command with the earlier options, or pass \
             --state with a new file to send every batch again (a batch the service accepted \
             within 24 hours is answered with its first job)",
            state.path().display()
        );
    }
    let accepted_rows: u64 = state.accepted.values().map(|b| b.lines.len() as u64).sum();
    progress.say(&format!(
        "{} batches accepted ({accepted_rows} videos; {skipped_batches} of them in an earlier run); state in {}",
        state.accepted.len(),
        state.path().display()
    ));
    let complete = refused_rows == 0 && failed_batches == 0 && bad.is_empty() && !stop.get();
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

/// `rows` cut into batches, lazily: at most `size` rows, and a body (`envelope` bytes
/// without its videos) of at most `max_bytes` unless one row alone is larger (the check
/// refuses such rows before).
fn batches(
    rows: impl Iterator<Item = Row>,
    size: usize,
    max_bytes: usize,
    envelope: usize,
) -> impl Iterator<Item = Vec<Row>> {
    let mut rows = rows.peekable();
    std::iter::from_fn(move || {
        let mut batch = Vec::new();
        let mut bytes = envelope;
        while batch.len() < size {
            let Some(next) = rows.peek() else {
                break;
            };
            // A comma before every video but the first.
            let more = next.json_len() + usize::from(!batch.is_empty());
            if !batch.is_empty() && bytes + more > max_bytes {
                break;
            }
            bytes += more;
            batch.extend(rows.next());
        }
        (!batch.is_empty()).then_some(batch)
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

    fn row(line: u64, title_bytes: usize) -> Row {
        Row {
            line,
            url: "https://a.example/v.mp4".into(),
            id: format!("v{line}"),
            file_name: "f".into(),
            metadata: json!({"title": "t".repeat(title_bytes)})
                .as_object()
                .unwrap()
                .clone(),
            checksum: Default::default(),
        }
    }

    fn cut(rows: Vec<Row>, size: usize, max_bytes: usize, envelope: usize) -> Vec<Vec<u64>> {
        batches(rows.into_iter(), size, max_bytes, envelope)
            .map(|b| b.iter().map(|r| r.line).collect())
            .collect()
    }

    #[test]
    fn batches_are_cut_at_the_size() {
        let rows: Vec<Row> = (1..=5).map(|line| row(line, 1)).collect();
        assert_eq!(
            cut(rows, 2, usize::MAX, 0),
            [vec![1, 2], vec![3, 4], vec![5]]
        );
    }

    #[test]
    fn batches_are_cut_before_their_body_outgrows_the_limit() {
        let envelope = r#"{"systemName":"archive","videos":[]}"#.len();
        let one = row(1, 100).json_len();
        // Room for exactly three videos (and their two commas).
        let max = envelope + 3 * one + 2;
        let rows: Vec<Row> = (1..=7).map(|line| row(line, 100)).collect();
        let batches: Vec<Vec<Row>> =
            batches(rows.clone().into_iter(), 1000, max, envelope).collect();
        let lines: Vec<Vec<u64>> = batches
            .iter()
            .map(|b| b.iter().map(|r| r.line).collect())
            .collect();
        assert_eq!(lines, [vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
        for batch in &batches {
            let body = json!({
                "systemName": "archive",
                "videos": batch.iter().map(Row::to_video).collect::<Vec<Value>>(),
            });
            assert!(serde_json::to_vec(&body).unwrap().len() <= max);
        }
        assert_eq!(serde_json::to_vec(&json!({"systemName": "archive", "videos": batches[0].iter().map(Row::to_video).collect::<Vec<Value>>()})).unwrap().len(), max);
        // A larger row starts a batch of its own.
        let mixed = vec![row(1, 100), row(2, 1000), row(3, 100)];
        assert_eq!(cut(mixed, 1000, max, envelope), [vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn refusals_are_shown_by_manifest_line() {
        let lines = [2, 3, 7];
        let fields = json!({"status": 400, "error_details": {
            "videos[2].url": "must be an http or https URL, not ftp:", "systemName": "must not be empty"}});
        assert_eq!(
            refusal_lines(&fields, &lines),
            [
                "systemName: must not be empty",
                "line 7 (videos[2].url): must be an http or https URL, not ftp:"
            ]
        );
        let metadata = json!({"status": 400, "error": "ValidationError", "error_details": {
            "message": "Metadata validation failed.",
            "errors": [{"metadataProperty": "title", "message": "3 is not of type \"string\"",
                        "index": 1, "externalId": "b"}]}});
        assert_eq!(
            refusal_lines(&metadata, &lines),
            ["line 3 (metadata.title): 3 is not of type \"string\""]
        );
    }

    #[test]
    fn a_refusal_for_the_batch_size_says_which_size_to_pass() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        let options = Cli::parse_from([
            "video-import",
            "m.csv",
            "--api",
            "http://127.0.0.1:1",
            "--token",
            "t",
            "--system-name",
            "s",
        ])
        .options;
        let body = json!({"error_details": {"videos": "has 1000 videos; a batch may have at most 500: split it into several batches"}});
        assert!(limit_hint(400, &body, &options)
            .unwrap()
            .contains("--batch-size 500"));
        assert!(limit_hint(413, &json!(null), &options)
            .unwrap()
            .contains("--max-body-bytes"));
        assert!(limit_hint(
            400,
            &json!({"error_details": {"videos[0].url": "x"}}),
            &options
        )
        .is_none());
    }

    #[test]
    fn networks_are_comma_separated_cidrs() {
        let list = parse_networks("127.0.0.1/32, 10.20.0.0/16,,").unwrap();
        assert_eq!(list.0.len(), 2);
        assert!(parse_networks("").unwrap().0.is_empty());
        assert!(parse_networks("intranet").unwrap_err().contains("CIDR"));
    }
}
