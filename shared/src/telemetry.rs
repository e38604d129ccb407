//! Logging setup, and span export when `telemetry.otlp_endpoint` is set (`otlp`).

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, FilterExt, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LogSettings, TelemetrySettings};
use crate::otlp::Exporting;

/// Libraries whose debug lines carry secrets.
const QUIET: &[&str] = &["tokio_postgres=warn", "reqwest=warn", "hyper_util=warn"];

/// The name of the spans of requests to the operational endpoints (`/healthz`, `/readyz`,
/// `/metrics`): logged like any request, never exported (a scrape every few seconds would
/// bury the jobs' traces).
pub const PROBE_SPAN: &str = "probe";

/// Installs the global subscriber: log lines as `log` says (`RUST_LOG` overrides
/// `log.filter`), and, when `telemetry` names a collector, this service's spans exported
/// there (`service` is its `service.name`). Returns what flushes the export at the end.
pub fn init(
    service: &str,
    log: &LogSettings,
    telemetry: &TelemetrySettings,
) -> anyhow::Result<Option<Exporting>> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // At debug these log every query's parameters (token hashes) and every URL (credentials,
    // presigned signatures): at most their warnings, whatever the filter says.
    let filter = QUIET.iter().fold(filter, |f, d| {
        f.add_directive(d.parse().expect("valid directive"))
    });
    // Colours only for a person at a terminal: a log file or a collector gets plain text.
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let lines = match log.format {
        LogFormat::Json => lines.json().with_filter(filter).boxed(),
        LogFormat::Text => lines.with_filter(filter).boxed(),
    };
    let exporting = Exporting::start(telemetry, service)?;
    // Spans are exported whatever the log filter says: this service's spans (and the events
    // in them) at info, none of a library's, no probe.
    let spans =
        exporting.as_ref().map(|exporting| {
            tracing_opentelemetry::layer()
                .with_tracer(exporting.tracer())
                .with_filter(Targets::new().with_target("video_import", Level::INFO).and(
                    filter_fn(|meta| !(meta.is_span() && meta.name() == PROBE_SPAN)),
                ))
        });
    Registry::default().with(spans).with(lines).init();
    if let Some(exporting) = &exporting {
        tracing::info!(endpoint = exporting.endpoint(), "exporting spans over OTLP");
    }
    Ok(exporting)
}

/// Installs ring as the process's TLS crypto provider (once; later calls do nothing).
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
