//! `video-import-notifier`: delivers each finished job's webhook, signed, with retries that
//! wait in RabbitMQ delay queues rather than in a sleeping consumer.
//!
//! - `app`: wiring: builds the state and starts the loops;
//! - `deliver`: what happens to one webhook message; `settle`: to a dead-lettered one;
//! - `post`: the payload and the signed POST;
//! - `hosts`: per-host slots, so one slow receiver cannot take every slot;
//! - `hold`: deliveries held in PostgreSQL while their host has no free slot, released as
//!   slots free up;
//! - `schedule`: every retry decision;
//! - `sign`: Standard Webhooks signatures;
//! - `metrics`: the notifier's Prometheus metrics.

mod app;
mod deliver;
mod hold;
mod hosts;
mod metrics;
mod post;
mod schedule;
mod settle;
mod sign;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    video_import_shared::process::main("video-import-notifier", app::run).await
}
