//! What every binary does around its work: load the configuration, set up logging and TLS,
//! and turn the outcome into an exit code.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::config::Settings;

/// The command line of the worker and the notifier.
#[derive(Debug, Parser)]
#[command(version)]
pub struct ServiceCli {
    /// TOML configuration file (environment variables VIDEO_IMPORT__SECTION__KEY override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,
}

/// What the worker and the notifier do besides running.
#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Exit 0 when the running process's /readyz (on metrics.listen) answers 200, 1 when
    /// not: for container health checks (the image has no curl).
    Healthcheck,
}

/// `main` of the worker and the notifier: `--config`, and `healthcheck`; [`run`]s `work`.
pub async fn main<F, Fut>(name: &'static str, work: F) -> ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let matches = ServiceCli::command().name(name).get_matches();
    let cli = match ServiceCli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Some(ServiceCommand::Healthcheck) => {
            healthcheck(name, cli.config.as_deref(), |s| s.metrics.listen).await
        }
        None => run(name, cli.config.as_deref(), work).await,
    }
}

/// `NAME healthcheck`: loads the settings (exit 2 when they are bad) and asks the running
/// process on the address `listen_of` picks from them for `/readyz`, within 5 s: exit 0
/// on 200, 1 otherwise with the reason on stderr. A wildcard address is asked on loopback.
pub async fn healthcheck(
    name: &str,
    config: Option<&Path>,
    listen_of: fn(&Settings) -> SocketAddr,
) -> ExitCode {
    let mut address = match Settings::load_for(name, config) {
        Ok(settings) => listen_of(&settings),
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    crate::telemetry::init_tls();
    let asked = async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .no_proxy()
            .build()?;
        client.get(format!("http://{address}/readyz")).send().await
    };
    match asked.await {
        Ok(answer) if answer.status() == reqwest::StatusCode::OK => ExitCode::SUCCESS,
        Ok(answer) => {
            eprintln!("{name}: not ready: {address} answered {}", answer.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "{name}: not ready: cannot reach {address}: {}",
                e.without_url()
            );
            ExitCode::FAILURE
        }
    }
}

/// A start-up failure that a setting causes, such as a listen address in use: reported like
/// a bad value, with exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingError(pub String);

/// Binds `addr` for the setting `key`; a failure (in use, not ours) is a [`SettingError`].
pub async fn bind(key: &str, addr: SocketAddr) -> Result<tokio::net::TcpListener, SettingError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        SettingError(format!(
            "cannot listen on {key} {addr}: {e}; choose a free address or stop what uses it"
        ))
    })
}

/// Loads settings (exit code 2 with the key at fault when they are bad), sets up TLS,
/// logging and span export (flushed after `work`, see `otlp`), runs `work` and reports its
/// error, if any, on stderr (exit code 2 for a [`SettingError`] or a schema this binary
/// cannot run against, an [`ExitWith`]'s own code, 1 otherwise).
pub async fn run<F, Fut>(name: &str, config: Option<&Path>, work: F) -> ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = match Settings::load_for(name, config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    map_large_allocations();
    // TLS first: the trace exporter's client needs its provider.
    crate::telemetry::init_tls();
    let exporting = match crate::telemetry::init(name, &settings.log, &settings.telemetry) {
        Ok(exporting) => exporting,
        Err(e) => {
            eprintln!("{name}: telemetry.otlp_endpoint: {e:#}");
            return ExitCode::from(2);
        }
    };
    let worked = work(settings).await;
    // Whatever the outcome, the spans of the work are flushed (bounded in time).
    if let Some(exporting) = exporting {
        exporting.shutdown().await;
    }
    match worked {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<SettingError>().is_some()
                || e.downcast_ref::<crate::store::migrate::SchemaError>()
                    .is_some() =>
        {
            eprintln!("{name}: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{name}: {e:#}");
            match e.downcast_ref::<ExitWith>() {
                Some(exit) => ExitCode::from(exit.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// An outcome that is no failure of the command but has an exit code of its own (such as
/// `storage verify` finding damaged objects, 3): its message goes to stderr like an error's.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitWith {
    pub code: u8,
    pub message: String,
}

/// Allocations of 1 MiB and more (a large download's write buffer) get pages of their own,
/// returned to the kernel when freed. glibc would otherwise raise that threshold to the
/// largest block freed so far (up to 32 MiB) and serve later buffers from its heaps, whose
/// freed holes it keeps: with 16 large downloads at once a worker's peak was 113–127 MiB,
/// 93–95 with this and exactly sized buffers (bench scenario 11, docs/benchmarks.md). Not
/// lower: a fresh mapping cost ~0.7 ms per MiB in page faults on the bench VM, and at 128 KiB
/// (72–74 MiB) every download paid that for its head and the HTTP client's buffers.
fn map_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets a tuning value of glibc's allocator under its own lock; it
    // neither takes nor frees memory the program holds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    #[test]
    fn a_worker_and_a_notifier_on_one_machine_get_ports_of_their_own() {
        let worker = Settings::load_for("video-import-worker", None).unwrap();
        let notifier = Settings::load_for("video-import-notifier", None).unwrap();
        assert_eq!(worker.metrics.listen.to_string(), "127.0.0.1:9091");
        assert_eq!(notifier.metrics.listen.to_string(), "127.0.0.1:9092");
        assert_ne!(worker.metrics.listen.port(), worker.api.listen.port());
    }
}
