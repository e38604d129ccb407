//! `video-import-worker`: downloads each video of an import job, stores it, upserts its
//! media-library entry and, with the last video of a job, announces the job's completion.

mod fetch;
mod import;
mod metrics;
mod probe;
mod record;
mod sniff;
mod store;
mod upsert;

use std::path::PathBuf;

use clap::Parser;
use video_import_shared::config::Settings;

/// Video import worker.
#[derive(Debug, Parser)]
#[command(name = "video-import-worker", version)]
struct Cli {
    /// TOML configuration file (environment variables VIDEO_IMPORT__SECTION__KEY override it).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("video-import-worker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    video_import_shared::telemetry::init(&settings.log);
    video_import_shared::telemetry::init_tls();
    match import::run(settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("video-import-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
