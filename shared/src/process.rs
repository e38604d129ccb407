//! What every binary does around its work: load the configuration, set up logging and TLS,
//! and turn the outcome into an exit code.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use crate::config::Settings;

/// Loads settings (exit code 2 with the key at fault when they are bad), sets up logging and
/// TLS, runs `work` and reports its error, if any, on stderr (exit code 1).
pub async fn run<F, Fut>(name: &str, config: Option<&Path>, work: F) -> ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(&settings.log);
    crate::telemetry::init_tls();
    match work(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
