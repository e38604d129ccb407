//! `video-import-worker`: downloads each video of an import job, stores it, upserts its
//! media-library entry and, with the last video of a job, announces the job's completion.
//!
//! - `app`: wiring: builds the state and starts the loops;
//! - `import`: what happens to one fetch message; `settle`: to a dead-lettered one;
//! - `dispatch`, `fair`: topping up the fetch queue from PostgreSQL in fair order between
//!   projects and jobs;
//! - `fetch`: the SSRF-checked, size- and time-bounded, resumable download; `error`: why
//!   one failed, retryable or not, with its class;
//! - `sources`: the projects' source rules (credentials, `s3://` buckets), cached;
//! - `hosts`: per-source-host download slots and pauses;
//! - `sniff`, `probe`: what kind of video it is, and its duration and size;
//! - `group_commit`: outcomes recorded a group per transaction (`store::outcomes`);
//! - `prune`: retention, finished jobs pruned down to tombstones in small batches;
//! - `retry_policy`: every retry decision;
//! - `metrics`: the worker's Prometheus metrics.

mod app;
mod dispatch;
mod error;
mod fair;
mod fetch;
mod group_commit;
mod hosts;
mod import;
mod metrics;
mod probe;
mod prune;
mod retry_policy;
mod settle;
mod sniff;
mod sources;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    video_import_shared::process::main("video-import-worker", app::run).await
}
