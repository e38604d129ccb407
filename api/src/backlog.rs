//! The backlog gauges: how much work of each kind waits and how long the oldest has waited,
//! and how many entries are marked damaged, read from PostgreSQL every few seconds (small
//! indexed reads), and whether the database answered. Every API process refreshes them; dashboards take the `max` over instances.

use std::time::Duration;

use deadpool_postgres::Pool;
use prometheus::{Gauge, GaugeVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use video_import_shared::metrics::register;
use video_import_shared::store::{backlog, entries};

/// How often the backlog is measured.
const EVERY: Duration = Duration::from_secs(5);

/// The kinds of work.
const KINDS: [&str; 3] = ["videos", "webhooks", "outbox"];

/// The gauges.
#[derive(Clone)]
pub struct BacklogMetrics {
    waiting: IntGaugeVec,
    oldest: GaugeVec,
    database_up: IntGauge,
    measured_at: Gauge,
    /// Entries whose stored object is marked damaged.
    damaged: IntGauge,
}

impl BacklogMetrics {
    /// Registers the families in `registry`, every kind at 0.
    pub fn new(registry: &Registry) -> Self {
        let waiting = IntGaugeVec::new(
            Opts::new("backlog", "Work waiting: videos, webhooks, outbox messages"),
            &["work"],
        )
        .expect("valid metric");
        let oldest = GaugeVec::new(
            Opts::new(
                "backlog_oldest_age_seconds",
                "How long the oldest waiting work of each kind has waited",
            ),
            &["work"],
        )
        .expect("valid metric");
        let database_up = IntGauge::new(
            "database_up",
            "1 when the last backlog measurement reached PostgreSQL",
        )
        .expect("valid metric");
        let measured_at = Gauge::new(
            "backlog_measured_timestamp_seconds",
            "When the backlog was last measured (Unix seconds); stale while PostgreSQL is down",
        )
        .expect("valid metric");
        let damaged = IntGauge::new(
            "storage_damaged_entries",
            "Entries whose stored object the verifier found missing or changed (marked until re-imported or found whole)",
        )
        .expect("valid metric");
        for kind in KINDS {
            waiting.with_label_values(&[kind]).set(0);
            oldest.with_label_values(&[kind]).set(0.0);
        }
        register(registry, &waiting);
        register(registry, &oldest);
        register(registry, &database_up);
        register(registry, &measured_at);
        register(registry, &damaged);
        Self {
            waiting,
            oldest,
            database_up,
            measured_at,
            damaged,
        }
    }

    fn set(&self, backlog: &backlog::Backlog) {
        for (kind, count, age) in [
            ("videos", backlog.videos, backlog.videos_oldest_secs),
            ("webhooks", backlog.webhooks, backlog.webhooks_oldest_secs),
            ("outbox", backlog.outbox, backlog.outbox_oldest_secs),
        ] {
            self.waiting.with_label_values(&[kind]).set(count);
            self.oldest.with_label_values(&[kind]).set(age);
        }
        self.measured_at
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }

    /// Measures every few seconds until `shutdown`.
    pub async fn run(self, pool: Pool, shutdown: CancellationToken) {
        loop {
            let measured = async {
                let client = pool.get().await?;
                let damaged = entries::damaged_count(&client).await?;
                anyhow::Ok((backlog::backlog(&client).await?, damaged))
            }
            .await;
            match measured {
                Ok((backlog, damaged)) => {
                    self.set(&backlog);
                    self.damaged.set(damaged);
                    self.database_up.set(1);
                }
                Err(_) => self.database_up.set(0),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
    }
}
