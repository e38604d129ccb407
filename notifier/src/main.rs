//! `video-import-notifier`: delivers each finished job's webhook, signed, with retries that
//! wait in RabbitMQ delay queues rather than in a sleeping consumer.
//!
//! - `consumer`: wiring, and what happens to one webhook message (and a dead-lettered one);
//! - `deliver`: the payload and the signed POST;
//! - `hosts`: per-host slots, so one slow receiver cannot take every slot;
//! - `hold`: deliveries held in PostgreSQL while their host has no free slot, released as
//!   slots free up;
//! - `schedule`: every retry decision;
//! - `sign`: Standard Webhooks signatures.

mod consumer;
mod deliver;
mod hold;
mod hosts;
mod schedule;
mod sign;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    video_import_shared::process::main("video-import-notifier", consumer::run).await
}
