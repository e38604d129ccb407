//! Wiring and the handling of one `FetchVideo` message: load the item, download it, record
//! the outcome; transient failures go back through a RabbitMQ delay queue.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;
use video_import_shared::config::Settings;
use video_import_shared::consume::{self, ConsumerConfig, Delivered, Disposition};
use video_import_shared::messages::{DeliverWebhook, FetchVideo};
use video_import_shared::ops::{self, Ops};
use video_import_shared::outbox::Relay;
use video_import_shared::queue::{self, Outgoing, Publisher, Topology};
use video_import_shared::retry::until_ok;
use video_import_shared::{db, shutdown};

use crate::fetch::{FetchError, Fetched, Fetcher};
use crate::metrics::WorkerMetrics;
use crate::record::Recorder;
use crate::store::Storage;
use crate::upsert::{self, JobCache, Outcome, Recorded};

/// Everything a delivery handler needs.
struct Importer {
    pool: Pool,
    jobs: JobCache,
    recorder: Recorder,
    fetcher: Fetcher,
    storage: Storage,
    publisher: Arc<Publisher>,
    relay: Relay,
    retry_delays: Vec<Duration>,
    metrics: WorkerMetrics,
    shutdown: CancellationToken,
}

/// Runs the worker until SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    let pool = db::connect(&settings.database).await?;
    let storage = Storage::open(&settings.storage).await?;
    let fetcher = Fetcher::new(&settings.fetch, storage.clone())?;
    let topology = Topology::new(&settings.amqp.prefix);
    let publisher = Arc::new(Publisher::new(&settings.amqp.url, topology.clone()));
    let registry = Registry::new();
    let metrics = WorkerMetrics::new(&registry)?;
    let relay = Relay::new(pool.clone(), publisher.clone(), &registry);
    let relay_task = tokio::spawn(relay.clone().run(shutdown.clone()));
    let ops_task = tokio::spawn(ops::serve(
        settings.metrics.listen.clone(),
        Ops {
            pool: pool.clone(),
            publisher: publisher.clone(),
            registry,
        },
        shutdown.clone(),
    ));
    let importer = Arc::new(Importer {
        recorder: Recorder::start(pool.clone(), shutdown.clone()),
        jobs: JobCache::default(),
        pool,
        fetcher,
        storage,
        publisher,
        relay,
        retry_delays: settings
            .fetch
            .retry_delays_secs
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect(),
        metrics,
        shutdown: shutdown.clone(),
    });
    let grace = Duration::from_secs(settings.fetch.shutdown_grace_secs);
    let fetch_handler: consume::Handler = {
        let importer = importer.clone();
        Arc::new(move |message| -> BoxFuture<'static, Disposition> {
            let importer = importer.clone();
            Box::pin(async move { importer.handle(&message.data).await })
        })
    };
    let dead_handler: consume::Handler =
        Arc::new(move |message| -> BoxFuture<'static, Disposition> {
            let importer = importer.clone();
            Box::pin(async move { importer.handle_dead(message).await })
        });
    let consumer = |queue: String, prefetch: usize, grace: Duration| ConsumerConfig {
        url: settings.amqp.url.clone(),
        queue,
        topology: topology.clone(),
        prefetch: prefetch.min(u16::MAX as usize) as u16,
        grace,
    };
    tokio::join!(
        consume::run(
            consumer(
                topology.queue(queue::FETCH),
                settings.fetch.concurrency,
                grace
            ),
            fetch_handler,
            shutdown.clone(),
        ),
        consume::run(
            consumer(topology.dead(), 16, Duration::from_secs(5)),
            dead_handler,
            shutdown.clone(),
        ),
    );
    shutdown.cancel();
    let _ = relay_task.await;
    ops_task.await??;
    Ok(())
}

impl Importer {
    async fn handle(&self, data: &[u8]) -> Disposition {
        let message: FetchVideo = match serde_json::from_slice(data) {
            Ok(m) => m,
            Err(e) => {
                // Not ours to fix by retrying; keep a trace and drop it.
                tracing::error!(error = %e, body = %String::from_utf8_lossy(data), "dropping unreadable fetch message");
                return Disposition::Ack;
            }
        };
        let item = match until_ok(&self.shutdown, || {
            upsert::load(&self.pool, &self.jobs, &message.job_id, message.idx)
        })
        .await
        {
            Some(Some(item)) if item.pending => item,
            Some(_) => return Disposition::Ack, // done already, or the job was deleted
            None => return Disposition::Requeue,
        };
        let started = std::time::Instant::now();
        let fetched = self
            .fetcher
            .download(&item.url, item.project_id, item.known.as_ref())
            .await;
        self.metrics
            .download_seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &fetched {
            Ok(Fetched::Stored(d)) => {
                self.metrics.bytes.inc_by(d.asset.size);
                Outcome::Downloaded(Box::new(d.clone()))
            }
            Ok(Fetched::NotModified) => Outcome::Unchanged,
            Err(FetchError::Permanent(reason)) => Outcome::Failed(reason.clone()),
            Err(error) => {
                let retry_after = match error {
                    FetchError::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let attempt = message.attempt as usize;
                match self.retry_delays.get(attempt) {
                    Some(delay) => {
                        let delay = retry_after.map_or(*delay, |after| after.max(*delay));
                        return self.retry_later(&item, &message, error, delay).await;
                    }
                    None => {
                        Outcome::Failed(format!("{error} (gave up after {} tries)", attempt + 1))
                    }
                }
            }
        };
        let downloaded_key = match &fetched {
            Ok(Fetched::Stored(d)) => Some(d.asset.key.as_str()),
            _ => None,
        };
        let recorded = self.recorder.record(item.clone(), outcome).await;
        let (disposition, asset_used) = match recorded {
            Some(Recorded::Done {
                state,
                job_finished,
                asset_used,
                replaced_key,
            }) => {
                self.metrics.outcomes.with_label_values(&[state]).inc();
                tracing::info!(job = %item.job_id, idx = item.idx, external_id = %item.external_id, state, "video done");
                if let Some(old) = replaced_key {
                    // Only now that the new entry is committed may the old asset go.
                    self.storage.remove(&old).await;
                }
                if job_finished {
                    tracing::info!(job = %item.job_id, "job finished");
                    self.relay.wake();
                }
                (Disposition::Ack, asset_used)
            }
            // A lost commit acknowledgement also lands here: ask whether the asset is in use.
            Some(Recorded::AlreadyDone) => (Disposition::Ack, false),
            None => (Disposition::Requeue, false),
        };
        if let Some(key) = downloaded_key.filter(|_| !asset_used) {
            let referenced =
                until_ok(&self.shutdown, || upsert::is_referenced(&self.pool, key)).await;
            if referenced == Some(false) {
                self.storage.remove(key).await;
            }
        }
        disposition
    }

    /// Handles a message the broker set aside after too many deliveries without an ack
    /// (the worker crashed or was killed each time): its video fails with that reason, so
    /// the job still finishes. A dead webhook message marks the delivery failed.
    async fn handle_dead(&self, message: Delivered) -> Disposition {
        let done = match message.routing_key.as_str() {
            queue::FETCH => match serde_json::from_slice::<FetchVideo>(&message.data) {
                Ok(fetch) => until_ok(&self.shutdown, || self.fail_dead_video(&fetch)).await,
                Err(_) => Some(()),
            },
            queue::WEBHOOK => match serde_json::from_slice::<DeliverWebhook>(&message.data) {
                Ok(hook) => {
                    until_ok(&self.shutdown, || {
                        upsert::fail_webhook(&self.pool, &hook.job_id)
                    })
                    .await
                }
                Err(_) => Some(()),
            },
            _ => Some(()),
        };
        match done {
            // The outcome is in PostgreSQL, where the status endpoint shows it.
            Some(()) => Disposition::Ack,
            None => Disposition::Requeue,
        }
    }

    async fn fail_dead_video(&self, fetch: &FetchVideo) -> anyhow::Result<()> {
        let Some(item) = upsert::load(&self.pool, &self.jobs, &fetch.job_id, fetch.idx).await?
        else {
            return Ok(());
        };
        let reason = format!(
            "set aside (dead-lettered) after {} deliveries that never finished: the worker \
             crashed or was stopped while importing it each time",
            queue::DELIVERY_LIMIT
        );
        let recorded =
            upsert::record(&self.pool, &[(item.clone(), Outcome::Failed(reason))]).await?;
        if let Some(Recorded::Done { job_finished, .. }) = recorded.first() {
            tracing::error!(job = %item.job_id, idx = item.idx, "video dead-lettered; marked failed");
            self.metrics.outcomes.with_label_values(&["failed"]).inc();
            if *job_finished {
                self.relay.wake();
            }
        }
        Ok(())
    }

    /// Notes the failure and republishes the message through a delay queue.
    async fn retry_later(
        &self,
        item: &upsert::Item,
        message: &FetchVideo,
        error: &FetchError,
        delay: Duration,
    ) -> Disposition {
        let reason = format!(
            "try {} failed: {error}; trying again in {} s",
            message.attempt + 1,
            delay.as_secs()
        );
        if until_ok(&self.shutdown, || {
            upsert::note_retry(&self.pool, item, &reason)
        })
        .await
        .is_none()
        {
            return Disposition::Requeue;
        }
        let next = FetchVideo {
            attempt: message.attempt + 1,
            ..message.clone()
        };
        let outgoing = Outgoing {
            routing_key: queue::FETCH.into(),
            payload: serde_json::to_vec(&next).expect("messages serialize"),
            delay: Some(delay),
        };
        match self.publisher.publish(&[outgoing]).await {
            Ok(()) => {
                self.metrics.retries.inc();
                tracing::info!(job = %item.job_id, idx = item.idx, %error, ?delay, "download failed; will try again");
                Disposition::Ack
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot schedule a retry; handing the message back");
                Disposition::Requeue
            }
        }
    }
}
