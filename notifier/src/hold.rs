//! Held deliveries: a delivery whose receiver's host has no free slot is held in PostgreSQL
//! (`store::webhooks::hold`) and its message acknowledged, instead of cycling through the
//! delay queues. The releaser publishes a host's held deliveries again only as far as this
//! notifier has free slots for that host, so a dead receiver's backlog costs nothing while it
//! waits, and a receiver that answers again is drained at its concurrency limit.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;
use video_import_shared::messages::DeliverWebhook;
use video_import_shared::periodic;
use video_import_shared::queue::{Outgoing, Publisher};
use video_import_shared::store::webhooks;
use video_import_shared::trace;

use crate::hosts::HostSlots;
use crate::schedule;

/// Pause between two looks at the held deliveries.
const TICK: Duration = Duration::from_millis(50);

/// Publishes held deliveries again as their hosts' slots free up.
pub struct Releaser {
    pub pool: Pool,
    pub publisher: Arc<Publisher>,
    pub hosts: Arc<HostSlots>,
    /// Held deliveries published again.
    pub released: IntCounter,
}

impl Releaser {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        periodic::every(
            TICK,
            shutdown,
            "cannot release held webhook deliveries; they stay held until it can",
            "held webhook deliveries are released again",
            || self.round(),
        )
        .await;
    }

    /// One look: for every host with held deliveries and free slots here, publishes as many
    /// as the free slots take. Returns how many.
    pub async fn round(&self) -> anyhow::Result<usize> {
        let mut client = self.pool.get().await.context("connecting to release")?;
        let held = webhooks::held_hosts(&client).await?;
        let mut released = 0;
        for (host, count) in held {
            let (free, waiting) = self.hosts.free(&host);
            let n = schedule::to_release(free, self.hosts.per_host(), waiting, count);
            if n == 0 {
                continue;
            }
            let tx = client.transaction().await.context("starting a release")?;
            let taken = webhooks::take_held(&tx, &host, n).await?;
            let messages: Vec<Outgoing> = taken
                .iter()
                .map(|h| {
                    let trace = h.trace_id.as_deref().and_then(trace::header_for);
                    DeliverWebhook::released(h).outgoing(None, trace)
                })
                .collect();
            // Published before the hold ends: a crash in between publishes them again, and
            // the attempt number makes the second message a no-op.
            self.publisher.publish(&messages).await?;
            let ids: Vec<&str> = taken.iter().map(|h| h.job_id.as_str()).collect();
            webhooks::unhold(&tx, &ids).await?;
            tx.commit().await.context("committing a release")?;
            released += taken.len();
        }
        self.released.inc_by(released as u64);
        Ok(released)
    }
}
