//! Logging setup.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Libraries whose debug lines carry secrets.
const QUIET: &[&str] = &["tokio_postgres=warn", "reqwest=warn", "hyper_util=warn"];

/// Installs the global subscriber; `RUST_LOG` overrides `log.filter`.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // At debug these log every query's parameters (token hashes) and every URL (credentials,
    // presigned signatures): at most their warnings, whatever the filter says.
    let filter = QUIET.iter().fold(filter, |f, d| {
        f.add_directive(d.parse().expect("valid directive"))
    });
    // Colours only for a person at a terminal: a log file or a collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match settings.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Installs ring as the process's TLS crypto provider (once; later calls do nothing).
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
