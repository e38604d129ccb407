//! `video-import-api`: accepts import batches, answers status and media-library reads, and
//! administers projects and tokens.

mod admin;
mod app;
mod auth;
mod error;
mod import;
mod media;
mod metadata;
mod model;
mod openapi;
mod quota;
mod redeliver;
mod request_id;
mod status;
mod validate;

use clap::Parser;
use video_import_shared::config::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = admin::Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("video-import-api: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    video_import_shared::telemetry::init(&settings.log);
    video_import_shared::telemetry::init_tls();
    match admin::run(cli.command.unwrap_or_default(), settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("video-import-api: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
