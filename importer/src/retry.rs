//! `video-import retry JOB_ID...`: asks the service for a new job of each job's failed
//! videos and prints one JSON line per job: `{"job", "retry"}` with the new job's id, or
//! `{"job", "error"}` saying why there is none (still running, nothing failed, unknown).

use std::process::ExitCode;

use serde_json::json;

use crate::client::{Api, CallError};
use crate::progress::Progress;

/// `video-import retry`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The finished jobs whose failed videos to import again.
    #[arg(required = true, value_name = "JOB_ID")]
    pub jobs: Vec<String>,
    /// Base URL of the API, e.g. https://import.example.org
    #[arg(long)]
    pub api: String,
    /// An API token with the public-api:write scope.
    #[arg(long)]
    pub token: String,
    /// Retry the videos a cancel failed as well.
    #[arg(long)]
    pub include_cancelled: bool,
}

/// Retries every job; exit 0 when each got a retry job, 1 when some did not.
pub async fn run(options: Options) -> anyhow::Result<ExitCode> {
    let api = Api::new(&options.api, &options.token)?;
    let notice = Progress::new(0);
    let mut refused = 0;
    for job in &options.jobs {
        let line = match api.retry(job, options.include_cancelled, &notice).await {
            Ok(retry) => json!({"job": job, "retry": retry}),
            Err(CallError::Refused { status, body }) => {
                refused += 1;
                let why = body["error_details"]["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| body.to_string());
                json!({"job": job, "status": status, "error": why})
            }
            Err(CallError::Failed(why)) => {
                refused += 1;
                json!({"job": job, "error": why})
            }
        };
        println!("{line}");
    }
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
