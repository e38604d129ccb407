//! `video-import-api`: accepts import batches, answers status and media-library reads, and
//! administers projects and tokens.

mod app;
mod asset;
mod auth;
mod backlog;
mod cancel;
mod cli;
mod conditional;
mod error;
mod import;
mod media;
mod metadata;
mod metrics;
mod model;
mod openapi;
mod protocol;
mod quota;
mod redeliver;
mod request_id;
mod retry;
mod server;
mod sources;
mod sources_cli;
mod state;
mod status;
mod validate;
mod versions;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let command = cli.command.unwrap_or_default();
    if let cli::Command::Healthcheck = command {
        let config = cli.config.as_deref();
        return video_import_shared::process::healthcheck("video-import-api", config, |s| {
            s.api.listen
        })
        .await;
    }
    video_import_shared::process::run("video-import-api", cli.config.as_deref(), |settings| {
        cli::run(command, settings)
    })
    .await
}
