//! `video-import-notifier`: delivers each finished job's webhook, signed, with retries that
//! wait in RabbitMQ delay queues rather than in a sleeping consumer.

mod deliver;
mod sign;

use std::path::PathBuf;

use clap::Parser;
use video_import_shared::config::Settings;

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
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("video-import-notifier: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    video_import_shared::telemetry::init(&settings.log);
    video_import_shared::telemetry::init_tls();
    match deliver::run(settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("video-import-notifier: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
