//! The notifier's Prometheus metrics (prefixed `video_import_` by the registry; see
//! `docs/metrics.md`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use video_import_shared::metrics::{dead_letters, register, ssrf_refusals};

/// Counters and histograms of webhook attempts.
#[derive(Clone)]
pub struct Metrics {
    pub deliveries: IntCounterVec,
    pub seconds: Histogram,
    pub in_flight: IntGauge,
    /// Deliveries held because their host had no free slot.
    pub holds: IntCounter,
    /// Held deliveries published again.
    pub released: IntCounter,
    pub dead_letters: IntCounter,
    pub ssrf_refusals: IntCounter,
}

impl Metrics {
    /// Registers the metrics in `registry`, every known label value at 0.
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "webhook_attempts_total",
                "Webhook attempts by result: delivered, retry, failed",
            ),
            &["result"],
        )?;
        let seconds = Histogram::with_opts(
            HistogramOpts::new(
                "webhook_attempt_duration_seconds",
                "Time of one webhook POST",
            )
            .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0]),
        )?;
        for result in ["delivered", "retry", "failed"] {
            deliveries.with_label_values(&[result]);
        }
        let in_flight = IntGauge::new("webhook_deliveries_in_flight", "Webhook POSTs running now")?;
        register(registry, &deliveries);
        register(registry, &seconds);
        let holds = IntCounter::new(
            "webhook_holds_total",
            "Deliveries held in PostgreSQL because their receiver's host had no free slot",
        )?;
        let released = IntCounter::new(
            "webhook_releases_total",
            "Held deliveries published again once their host had a free slot",
        )?;
        register(registry, &in_flight);
        register(registry, &holds);
        register(registry, &released);
        Ok(Self {
            deliveries,
            seconds,
            in_flight,
            holds,
            released,
            dead_letters: dead_letters(registry, "webhook"),
            ssrf_refusals: ssrf_refusals(registry, "notifier"),
        })
    }
}
