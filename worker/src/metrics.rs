//! The worker's Prometheus metrics.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// Counters and histograms of downloads and outcomes.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// Finished videos by outcome (imported, skipped, failed).
    pub outcomes: IntCounterVec,
    /// Tries that failed and were scheduled again.
    pub retries: IntCounter,
    pub bytes: IntCounter,
    pub download_seconds: Histogram,
}

impl WorkerMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let outcomes = IntCounterVec::new(
            Opts::new("videos_processed_total", "Videos finished, by outcome"),
            &["outcome"],
        )?;
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
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0,
            ]),
        )?;
        registry.register(Box::new(outcomes.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(download_seconds.clone()))?;
        Ok(Self {
            outcomes,
            retries,
            bytes,
            download_seconds,
        })
    }
}
