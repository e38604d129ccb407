//! Spans exported over OTLP/HTTP (protobuf) with the OpenTelemetry SDK, when
//! `telemetry.otlp_endpoint` is set: the API's request spans, the worker's span of each video
//! and the notifier's span of each webhook delivery, each in its job's trace (`trace`).
//!
//! Export never costs the work anything but the spans: finished spans wait in a bounded
//! queue (`telemetry.queue_size`) that the SDK's batch processor drains on a thread of its
//! own; a span that finds the queue full is dropped, and so are the spans of an export the
//! collector did not take (after the exporter's own bounded retries), both counted in
//! `video_import_trace_spans_dropped_total`. The exporter's HTTP client never uses a proxy
//! from the environment: the collector is the address the operator configured. A stopping
//! binary waits at most `telemetry.export_timeout_secs` for its last spans.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Compression, Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::config::TelemetrySettings;

/// Spans sent to the collector in one request, at most.
const MAX_BATCH: usize = 512;

/// The export's counters, one set per process (every registry of the process shows them).
struct TraceMetrics {
    exported: IntCounter,
    dropped: IntCounterVec,
    failures: IntCounter,
}

static METRICS: LazyLock<TraceMetrics> = LazyLock::new(|| {
    let metrics = TraceMetrics {
        exported: IntCounter::new(
            "trace_spans_exported_total",
            "Spans the trace collector accepted",
        )
        .expect("valid metric"),
        dropped: IntCounterVec::new(
            Opts::new(
                "trace_spans_dropped_total",
                "Spans never exported: the export queue was full (queue_full) or the collector did not take them (export_failed)",
            ),
            &["reason"],
        )
        .expect("valid metric"),
        failures: IntCounter::new(
            "trace_export_failures_total",
            "Export requests the trace collector did not accept (after the exporter's retries)",
        )
        .expect("valid metric"),
    };
    for reason in [QUEUE_FULL, EXPORT_FAILED] {
        metrics.dropped.with_label_values(&[reason]);
    }
    metrics
});

const QUEUE_FULL: &str = "queue_full";
const EXPORT_FAILED: &str = "export_failed";

/// Registers the export's counters in `registry` (they stay at 0 while export is off).
pub fn register_metrics(registry: &Registry) {
    let metrics = &*METRICS;
    crate::metrics::register(registry, &metrics.exported);
    crate::metrics::register(registry, &metrics.dropped);
    crate::metrics::register(registry, &metrics.failures);
}

/// Spans being exported: the tracer the `tracing` layer records into, and what flushes it.
pub struct Exporting {
    provider: SdkTracerProvider,
    endpoint: String,
    timeout: Duration,
}

impl fmt::Debug for Exporting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporting")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Exporting {
    /// Sets up export to `settings.otlp_endpoint` for `service` (`video-import-api`, …);
    /// `None` when no endpoint is configured. Needs the TLS provider installed
    /// (`telemetry::init_tls`) for an https collector.
    pub fn start(settings: &TelemetrySettings, service: &str) -> anyhow::Result<Option<Self>> {
        let Some(endpoint) = settings.traces_url() else {
            return Ok(None);
        };
        let timeout = settings.export_timeout;
        // The blocking client runs a runtime of its own: built outside this one (reqwest
        // refuses to be built inside an async context), as the exporter itself would.
        let client = std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .no_proxy()
                .connect_timeout(timeout)
                .timeout(timeout)
                .build()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("building the trace exporter's HTTP client panicked"))?
        .context("building the trace exporter's HTTP client")?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(timeout)
            .with_compression(Compression::Gzip)
            .build()
            .with_context(|| format!("setting up the trace exporter for {endpoint}"))?;
        let queue = Arc::new(Queue::new(settings.queue_size));
        let batches = BatchSpanProcessor::builder(Counting {
            inner: exporter,
            queue: queue.clone(),
            endpoint: endpoint.clone(),
            failing: AtomicBool::new(false),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                // Never full before ours: every span it gets was admitted by `Queue`.
                .with_max_queue_size(settings.queue_size)
                .with_max_export_batch_size(MAX_BATCH.min(settings.queue_size))
                .build(),
        )
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded {
                inner: batches,
                queue,
            })
            .with_sampler(sampler(settings.sample_ratio))
            .with_resource(
                Resource::builder()
                    .with_service_name(service.to_string())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        Ok(Some(Self {
            provider,
            endpoint,
            timeout,
        }))
    }

    /// The tracer the `tracing` layer records spans into.
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("video-import")
    }

    /// Where spans go (`…/v1/traces`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Exports what is still queued, waiting at most `telemetry.export_timeout_secs`: a dead
    /// or slow collector delays a stopping binary by that much at most.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let timeout = self.timeout;
        // The SDK's shutdown blocks (on its export thread); not on a runtime worker.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout));
        match tokio::time::timeout(timeout + Duration::from_secs(1), flushed).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, endpoint = %self.endpoint, "the last spans were not all exported")
            }
            _ => {
                tracing::warn!(endpoint = %self.endpoint, "the trace collector did not take the last spans in time")
            }
        }
    }
}

/// Keeps a share `ratio` of the traces, decided from the trace id alone: the three binaries
/// keep the same jobs' spans whatever the flags of the `traceparent` they received say.
fn sampler(ratio: f64) -> Sampler {
    if ratio >= 1.0 {
        Sampler::AlwaysOn
    } else if ratio <= 0.0 {
        Sampler::AlwaysOff
    } else {
        Sampler::TraceIdRatioBased(ratio)
    }
}

/// The spans finished and not yet through an export: admitted up to a limit, released by
/// the exporter once their export is over (accepted or not).
#[derive(Debug)]
struct Queue {
    held: AtomicUsize,
    limit: usize,
}

impl Queue {
    fn new(limit: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes a place for one span; `false` when the queue is full.
    fn admit(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.limit).then_some(held + 1)
            })
            .is_ok()
    }

    /// Gives back the places of `spans` whose export is over.
    fn release(&self, spans: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(spans))
            });
    }
}

/// The SDK's batch processor behind a queue limit of ours. The SDK drops a span that finds
/// its queue full without telling anyone but its own log; admitting spans here first (into
/// a batch processor whose queue is as large as ours, so it never drops on its own) lets
/// every drop be counted.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    queue: Arc<Queue>,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queue.admit() {
            self.inner.on_end(span);
        } else {
            METRICS.dropped.with_label_values(&[QUEUE_FULL]).inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what the collector took and what it did not, and freeing
/// the spans' places in the [`Queue`] once their export is over.
struct Counting<E> {
    inner: E,
    queue: Arc<Queue>,
    endpoint: String,
    /// The last export failed (its failure was logged; the next success is).
    failing: AtomicBool,
}

impl<E> fmt::Debug for Counting<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counting")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        self.queue.release(spans);
        match &result {
            Ok(()) => {
                METRICS.exported.inc_by(spans as u64);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "the trace collector takes spans again");
                }
            }
            Err(e) => {
                METRICS.failures.inc();
                METRICS
                    .dropped
                    .with_label_values(&[EXPORT_FAILED])
                    .inc_by(spans as u64);
                // Once per outage, not once per batch: the counters tell the rest.
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, "cannot export spans; dropping them until the trace collector takes them again");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_admits_up_to_its_limit_and_frees_places_as_exports_end() {
        let queue = Queue::new(3);
        assert!(queue.admit() && queue.admit() && queue.admit());
        assert!(!queue.admit(), "full");
        queue.release(2);
        assert!(queue.admit() && queue.admit());
        assert!(!queue.admit());
        queue.release(10);
        assert!(queue.admit());
    }

    #[test]
    fn the_share_of_traces_kept_is_the_configured_one() {
        assert!(matches!(sampler(1.0), Sampler::AlwaysOn));
        assert!(matches!(sampler(0.0), Sampler::AlwaysOff));
        assert!(matches!(sampler(0.25), Sampler::TraceIdRatioBased(r) if r == 0.25));
    }
}
