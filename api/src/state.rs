//! What every request handler shares: the pool, the outbox relay, settings, compiled
//! metadata schemas, the rate limiter and the API's metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use deadpool_postgres::Pool;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use video_import_shared::config::Settings;
use video_import_shared::outbox::Relay;

use crate::metadata::Schemas;
use crate::quota::RateLimit;
use crate::validate::Targets;

/// Shared by every request; each handler gets a clone, and every field is a cheap handle.
#[derive(Clone)]
pub struct AppState {
    /// PostgreSQL connections; a handler holds one only for its queries.
    pub pool: Pool,
    /// Woken after a commit that wrote outbox rows, so they are published at once.
    pub relay: Relay,
    /// Read-only after start.
    pub settings: Arc<Settings>,
    /// Counters shared by all requests (atomics inside).
    pub metrics: ApiMetrics,
    /// Compiled metadata schemas per project, behind their own lock.
    pub schemas: Arc<Schemas>,
    /// Per-token request rate, when configured (a concurrent map inside).
    pub rate_limit: Option<RateLimit>,
    /// Addresses the worker and notifier may reach, checked at the door (read-only).
    pub targets: Arc<Targets>,
}

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
