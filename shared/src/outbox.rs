//! Transactional outbox: messages are written in the same transaction as the state they
//! announce, and a relay publishes them with confirms, then deletes them. A crash anywhere
//! leaves the rows in place for the next relay run; consumers tolerate the duplicates.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use prometheus::{IntCounter, Registry};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::messages::{self, DeliverWebhook};
use crate::queue::{Outgoing, Publisher};
use crate::store;
use crate::store::webhooks::RoundStarted;

/// Rows published per round trip.
const BATCH: i64 = 1000;

/// Publishes outbox rows; every process that writes to the outbox runs one.
#[derive(Clone)]
pub struct Relay {
    pool: Pool,
    publisher: Arc<Publisher>,
    wake: Arc<Notify>,
    published: IntCounter,
    failures: IntCounter,
}

impl Relay {
    /// A relay publishing through `publisher`; its metrics go to `registry`.
    pub fn new(pool: Pool, publisher: Arc<Publisher>, registry: &Registry) -> Self {
        let published = IntCounter::new(
            "outbox_published_total",
            "Outbox messages published and confirmed",
        )
        .expect("valid metric");
        let failures = IntCounter::new(
            "outbox_publish_failures_total",
            "Outbox relay rounds that failed (broker or database down)",
        )
        .expect("valid metric");
        for m in [
            Box::new(published.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
        ] {
            let _ = registry.register(m);
        }
        Self {
            pool,
            publisher,
            wake: Arc::new(Notify::new()),
            published,
            failures,
        }
    }

    /// Asks the relay to publish now instead of at its next tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs until `shutdown`, publishing on wake-ups and every second.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            loop {
                match self.publish_batch().await {
                    Ok(n) => {
                        if failing_since.take().is_some() {
                            tracing::info!("outbox relay recovered");
                        }
                        if n < BATCH as usize {
                            break;
                        }
                    }
                    Err(error) => {
                        self.failures.inc();
                        // Log once per outage, not once a second.
                        if failing_since.is_none() {
                            tracing::warn!(error = %format!("{error:#}"), "outbox relay cannot publish; accepted work waits in the outbox and will be published when the broker is back");
                            failing_since = Some(std::time::Instant::now());
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Publishes one batch; returns how many rows it published.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        let mut client = self.pool.get().await.context("connecting to the outbox")?;
        let tx = client
            .transaction()
            .await
            .context("starting the relay round")?;
        let rows = store::outbox::claim(&tx, BATCH).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let messages: Vec<Outgoing> = rows.into_iter().map(messages::from_outbox).collect();
        self.publisher.publish(&messages).await?;
        store::outbox::remove(&tx, &ids).await?;
        tx.commit().await.context("committing the relay round")?;
        self.published.inc_by(ids.len() as u64);
        Ok(ids.len())
    }
}

/// Queues the first attempt of each webhook round that the transaction started (a finished
/// job's first round, a redelivery's): written with the state that started it, published by
/// the relay after the commit.
pub async fn announce(
    tx: &deadpool_postgres::Transaction<'_>,
    rounds: &[RoundStarted],
) -> anyhow::Result<()> {
    let messages: Vec<_> = rounds.iter().map(DeliverWebhook::announce).collect();
    store::outbox::enqueue(tx, &messages).await
}
