//! `video-import-worker`: downloads each video of an import job, stores it, upserts its
//! media-library entry and, with the last video of a job, announces the job's completion.
//!
//! - `consumer`: wiring, and what happens to one fetch message (and a dead-lettered one);
//! - `dispatch`, `fair`: topping up the fetch queue from PostgreSQL in fair order between
//!   projects and jobs;
//! - `load`: the video a message names, with a cache of job facts;
//! - `fetch`: the SSRF-checked, size- and time-bounded, resumable download;
//! - `hosts`: per-source-host download slots and pauses;
//! - `sniff`, `probe`: what kind of video it is, and its duration and size;
//! - `group_commit`: outcomes recorded a group per transaction (`store::outcomes`);
//! - `retry_policy`: every retry decision;
//! - `metrics`: the worker's Prometheus metrics.

mod consumer;
mod dispatch;
mod fair;
mod fetch;
mod group_commit;
mod hosts;
mod load;
mod metrics;
mod probe;
mod retry_policy;
mod sniff;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    video_import_shared::process::main("video-import-worker", consumer::run).await
}
