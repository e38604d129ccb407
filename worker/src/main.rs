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
    video_import_shared::process::run("video-import-worker", cli.config.as_deref(), |settings| {
        import::run(settings)
    })
    .await
}
