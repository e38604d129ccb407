//! `video-import-bench`: starts the real stack (release binaries) against PostgreSQL and
//! RabbitMQ on this machine and prints, per scenario, the figure and its ratio to a raw
//! baseline measured in the same run.
//!
//! Run: `cargo build --release --workspace --bins && target/release/video-import-bench [SCENARIO…]`
//! with SCENARIO among e2e, accept, large, latency, retried, webhooks, importer, archive, fair, polite,
//! retention, growth, disk, polling, fair-growth (default: all).

mod baseline;
mod disk;
mod polling;
mod retention;
mod scale;
mod scenarios;
mod servers;
mod stored;
mod sweeper;

use clap::Parser;

/// Benchmark harness.
#[derive(Parser)]
struct Cli {
    /// Scenarios to run: e2e, accept, large, latency, retried, webhooks, importer, archive, fair,
    /// polite, retention, growth, disk, polling, fair-growth, sweeper (default: all).
    scenarios: Vec<String>,
    /// Old finished videos the retention scenario loads and prunes.
    #[arg(long, default_value_t = 2_000_000)]
    retention_items: u64,
    /// Videos the profile run imports (scenario 1's import alone, no baselines).
    #[arg(long, default_value_t = 100_000)]
    profile_videos: usize,
    /// The project counts of the fair-growth scenario (to profile one of them alone).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    fair_growth_projects: Vec<usize>,
    /// Videos of each of the retention scenario's three imports.
    #[arg(long, default_value_t = 10_000)]
    retention_videos: usize,
    /// Videos in the sweeper scenario's library.
    #[arg(long, default_value_t = 20_000)]
    sweeper_videos: usize,
}

/// One printed result.
pub struct Row {
    pub scenario: &'static str,
    pub figure: String,
    pub baseline: String,
    pub ratio: String,
    pub target: &'static str,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    video_import_shared::telemetry::init_tls();
    let cli = Cli::parse();
    let all = [
        "e2e",
        "stored",
        "accept",
        "large",
        "latency",
        "retried",
        "webhooks",
        "importer",
        "archive",
        "fair",
        "polite",
        "retention",
        "growth",
        "disk",
        "polling",
        "fair-growth",
        "sweeper",
    ];
    let chosen: Vec<String> = if cli.scenarios.is_empty() {
        all.iter().map(|s| s.to_string()).collect()
    } else {
        cli.scenarios.clone()
    };
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        baseline::memory()
    );
    // Stored files stay until the end (see `defer_folder_removal`), so that no run pays for
    // the files the run before it removed; removed at exit, even after an error.
    struct RemoveAtExit;
    impl Drop for RemoveAtExit {
        fn drop(&mut self) {
            video_import_tests::remove_deferred_folders();
        }
    }
    let _remove = RemoveAtExit;
    video_import_tests::defer_folder_removal();
    let mut rows = Vec::new();
    for scenario in &chosen {
        println!("\n== {scenario}");
        let result = match scenario.as_str() {
            "e2e" => scenarios::end_to_end().await,
            "stored" => stored::storage_path().await,
            "accept" => scenarios::acceptance().await,
            "large" => scenarios::large_file().await,
            "latency" => scenarios::latency_bound().await,
            "retried" => scenarios::retried().await,
            "webhooks" => scenarios::webhooks().await,
            "importer" => scenarios::importer().await,
            "archive" => scale::archive_size().await,
            "fair" => scale::fairness().await,
            "polite" => scale::polite().await,
            "retention" => retention::retention(cli.retention_items, cli.retention_videos).await,
            "growth" => scenarios::growth().await,
            // Scenario 1's import alone, without baselines: for profilers and paired runs.
            "profile" => scenarios::end_to_end_run(cli.profile_videos)
                .await
                .map(|_| Vec::new()),
            "disk" => disk::archive_disk().await,
            "polling" => polling::polling().await,
            "fair-growth" => scale::fairness_growth(&cli.fair_growth_projects).await,
            "sweeper" => sweeper::sweeper(cli.sweeper_videos).await,
            other => anyhow::bail!(
                "unknown scenario {other:?}; use one of {} (or profile)",
                all.join(", ")
            ),
        };
        match result {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => println!("{scenario} failed: {e:#}"),
        }
        if scenario == "disk" {
            // Its 8.5 GiB go at once; the next run gets a pause the size of ext4's window.
            video_import_tests::remove_deferred_folders();
            video_import_tests::defer_folder_removal();
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
    }
    println!("\n| scenario | figure | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.scenario, r.figure, r.baseline, r.ratio, r.target
        );
    }
    Ok(())
}
