//! The worker's Prometheus metrics (prefixed `video_import_` by the registry; see
//! `docs/metrics.md`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use video_import_shared::metrics::{dead_letters, duration_buckets, register, ssrf_refusals};
use video_import_shared::store::ItemState;

use crate::error::FailureClass;

/// Counters and histograms of downloads and outcomes.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// Finished videos by outcome (imported, skipped, failed).
    pub outcomes: IntCounterVec,
    /// Failed videos by a bounded class of reason.
    pub failures: IntCounterVec,
    /// Tries that failed and were scheduled again.
    pub retries: IntCounter,
    pub bytes: IntCounter,
    pub download_seconds: Histogram,
    pub video_bytes: Histogram,
    /// Downloads running now.
    pub in_flight: IntGauge,
    /// Videos the worker holds: in a download slot or waiting for one (see `import::Held`).
    pub held: IntGauge,
    /// From acceptance to the last video, per finished job.
    pub job_seconds: Histogram,
    pub dead_letters: IntCounter,
    pub ssrf_refusals: IntCounter,
}

impl WorkerMetrics {
    /// Registers the metrics in `registry`, every known label value at 0.
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let outcomes = IntCounterVec::new(
            Opts::new("videos_processed_total", "Videos finished, by outcome"),
            &["outcome"],
        )?;
        for state in [ItemState::Imported, ItemState::Skipped, ItemState::Failed] {
            outcomes.with_label_values(&[state.as_str()]);
        }
        let failures = IntCounterVec::new(
            Opts::new(
                "video_failures_total",
                "Videos that failed, by class of reason (the reason itself is in the job's status)",
            ),
            &["reason"],
        )?;
        for class in FailureClass::ALL {
            failures.with_label_values(&[class.as_str()]);
        }
        let retries = IntCounter::new(
            "video_retries_total",
            "Downloads that failed transiently and were scheduled again",
        )?;
        let bytes = IntCounter::new("download_bytes_total", "Bytes downloaded")?;
        let download_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "download_duration_seconds",
                "Time to download and store one video",
            )
            .buckets(duration_buckets()),
        )?;
        let video_bytes = Histogram::with_opts(
            HistogramOpts::new("video_size_bytes", "Size of each stored video")
                .buckets(prometheus::exponential_buckets(64.0 * 1024.0, 4.0, 12)?),
        )?;
        let in_flight = IntGauge::new("downloads_in_flight", "Downloads running now")?;
        let held = IntGauge::new(
            "videos_held",
            "Videos this worker holds: in a download slot or waiting for one",
        )?;
        let job_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "job_duration_seconds",
                "From a job's acceptance to its last video",
            )
            .buckets(duration_buckets()),
        )?;
        for metric in [&retries, &bytes] {
            register(registry, metric);
        }
        register(registry, &outcomes);
        register(registry, &failures);
        register(registry, &download_seconds);
        register(registry, &video_bytes);
        register(registry, &in_flight);
        register(registry, &held);
        register(registry, &job_seconds);
        Ok(Self {
            outcomes,
            failures,
            retries,
            bytes,
            download_seconds,
            video_bytes,
            in_flight,
            held,
            job_seconds,
            dead_letters: dead_letters(registry, "fetch"),
            ssrf_refusals: ssrf_refusals(registry, "worker"),
        })
    }
}

impl WorkerMetrics {
    /// Counts a video that finished in `state` (and, when it failed, its `class`).
    pub fn finished(&self, state: ItemState, class: FailureClass) {
        self.outcomes.with_label_values(&[state.as_str()]).inc();
        if state == ItemState::Failed {
            self.failures.with_label_values(&[class.as_str()]).inc();
        }
    }
}
