//! `video-import-notifier`: delivers each finished job's webhook, signed, with retries that
//! wait in RabbitMQ delay queues rather than in a sleeping consumer.

mod deliver;
mod sign;

use std::path::PathBuf;

use clap::Parser;

/// Video import webhook notifier.
#[derive(Debug, Parser)]
#[command(name = "video-import-notifier", version)]
struct Cli {
    /// TOML configuration file (environment variables VIDEO_IMPORT__SECTION__KEY override it).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    video_import_shared::process::run("video-import-notifier", cli.config.as_deref(), |settings| {
        deliver::run(settings)
    })
    .await
}
