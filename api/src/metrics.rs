//! The API's Prometheus metrics (prefixed `video_import_` by the registry; see
//! `docs/metrics.md`); the backlog gauges are in `backlog`.

use std::time::Duration;

use axum::http::StatusCode;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// The API's own metrics.
#[derive(Clone)]
pub struct ApiMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    pub videos_accepted: IntCounter,
    pub jobs_accepted: IntCounter,
}

impl ApiMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route"],
        )?;
        let videos_accepted =
            IntCounter::new("videos_accepted_total", "Videos accepted for import")?;
        let jobs_accepted = IntCounter::new("jobs_accepted_total", "Import jobs accepted")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(videos_accepted.clone()))?;
        registry.register(Box::new(jobs_accepted.clone()))?;
        Ok(Self {
            requests,
            latency,
            videos_accepted,
            jobs_accepted,
        })
    }
}

impl ApiMetrics {
    /// Counts one answered request and its latency.
    pub fn observe(&self, route: &str, status: StatusCode, elapsed: Duration) {
        self.latency
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        self.requests
            .with_label_values(&[route, status.as_str()])
            .inc();
    }
}
