//! `video-import`: imports a whole archive from a manifest through the video import API.
//!
//! - `manifest`: CSV and JSON Lines rows, streamed (`quoting`: what the csv crate lets
//!   through); `check`: every rule of the API, applied to each row before anything is sent;
//! - `submit`: batches, posted a few at a time with Idempotency-Keys;
//! - `state`: the file that makes a re-run resume;
//! - `report`: following the jobs to the end, and `failures.csv`;
//! - `client`: the API calls, their retries and waits; `progress`: what the user sees.

mod bagit;
mod check;
mod client;
mod manifest;
mod progress;
mod quoting;
mod report;
mod retry;
mod state;
mod submit;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Import videos into the video import service.
#[derive(Debug, Parser)]
#[command(name = "video-import", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Import every row of a manifest (CSV or JSON Lines); re-run the same command to
    /// resume after a crash or Ctrl-C.
    Import(Box<submit::Options>),
    /// Import the failed videos of finished jobs again: one new job per job, printed as a
    /// JSON line ({"job","retry"}); running it twice makes no second retry.
    Retry(retry::Options),
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let outcome = match Cli::parse().command {
        Command::Import(options) => submit::run(*options).await,
        Command::Retry(options) => retry::run(options).await,
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("video-import: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The default path of a file kept beside the manifest.
fn beside(manifest: &std::path::Path, suffix: &str) -> PathBuf {
    let mut name = manifest.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
