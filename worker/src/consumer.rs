//! The worker's wiring, and the handling of one `FetchVideo` message: load the video,
//! download it, record the outcome; a failure the retry policy says to try again goes back
//! through a RabbitMQ delay queue. Also settles the fetch messages the broker dead-lettered.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use video_import_shared::config::Settings;
use video_import_shared::consume::{self, Delivered, Disposition};
use video_import_shared::messages::FetchVideo;
use video_import_shared::outbox::Relay;
use video_import_shared::queue::{self, Outgoing, Publisher};
use video_import_shared::retry::until_ok;
use video_import_shared::service::Service;
use video_import_shared::store::entries;
use video_import_shared::store::items::{self, Item};
use video_import_shared::store::outcomes::{self, Outcome, Recorded};
use video_import_shared::store::ItemState;
use video_import_shared::sweep;
use video_import_shared::trace::TraceParent;

use crate::dispatch::Dispatcher;
use crate::fetch::{FetchError, Fetched, Fetcher};
use crate::group_commit::Recorder;
use crate::hosts::{SourceHosts, Turn};
use crate::load::{self, JobCache};
use crate::metrics::WorkerMetrics;
use crate::retry_policy::{self, Next, RetryPolicy};
use video_import_shared::storage::Storage;

/// Everything a delivery handler needs; shared by all handlers through an `Arc`.
struct Importer {
    pool: Pool,
    /// Job facts already read (a lock held only for a map lookup).
    jobs: JobCache,
    /// Hands outcomes to the group-commit tasks.
    recorder: Recorder,
    fetcher: Fetcher,
    /// Download slots and pauses per source host (a lock held only for a map lookup).
    hosts: Arc<SourceHosts>,
    storage: Storage,
    retries: RetryPolicy,
    /// Publishes retries into the delay queues.
    publisher: Arc<Publisher>,
    /// Woken when a job finished, to publish its webhook message at once.
    relay: Relay,
    metrics: WorkerMetrics,
    shutdown: CancellationToken,
}

/// Runs the worker until SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let service = Service::start(&settings, "worker").await?;
    let storage = Storage::open(&settings.storage).await?;
    let hosts = Arc::new(SourceHosts::new(settings.fetch.per_host_concurrency));
    let fetcher = Fetcher::new(&settings.fetch, storage.clone(), hosts.clone())?;
    let metrics = WorkerMetrics::new(&service.registry)?;
    let relay = Relay::new(
        service.pool.clone(),
        service.publisher.clone(),
        &service.registry,
    );
    let relay_task = tokio::spawn(relay.clone().run(service.shutdown.clone()));
    let dispatcher = Dispatcher::new(
        service.pool.clone(),
        service.publisher.clone(),
        settings.fetch.dispatch_ahead,
        settings.fetch.concurrency as u32,
        &service.registry,
    );
    let dispatch_task = tokio::spawn(dispatcher.run(service.shutdown.clone()));
    let ops_task = service.serve_ops(settings.metrics.listen).await?;
    if !settings.storage.sweep_interval.is_zero() {
        tokio::spawn(sweep::every(
            storage.clone(),
            service.pool.clone(),
            settings.storage.sweep_grace,
            settings.storage.sweep_interval,
            service.shutdown.clone(),
        ));
    }
    let importer = Arc::new(Importer {
        recorder: Recorder::start(service.pool.clone(), service.shutdown.clone()),
        jobs: JobCache::default(),
        pool: service.pool.clone(),
        fetcher,
        hosts,
        storage,
        retries: RetryPolicy::new(&settings.fetch),
        publisher: service.publisher.clone(),
        relay,
        metrics,
        shutdown: service.shutdown.clone(),
    });
    let fetch_handler = consume::handler(importer.clone(), |importer, message| async move {
        importer.handle(message).await
    });
    let dead_handler = consume::handler(importer, |importer, message| async move {
        importer.handle_dead(message).await
    });
    service
        .consume(
            queue::FETCH,
            settings.fetch.concurrency,
            settings.fetch.shutdown_grace,
            fetch_handler,
            dead_handler,
        )
        .await;
    service.shutdown.cancel();
    let _ = relay_task.await;
    let _ = dispatch_task.await;
    ops_task.await??;
    Ok(())
}

impl Importer {
    async fn handle(&self, delivered: Delivered) -> Disposition {
        let Some(message) = delivered.decode::<FetchVideo>() else {
            return Disposition::Ack;
        };
        let span = tracing::info_span!("video", job = %message.job_id, idx = message.idx, attempt = message.attempt, trace_id = delivered.trace_id());
        self.import(message, delivered.traceparent)
            .instrument(span)
            .await
    }

    async fn import(&self, message: FetchVideo, trace: Option<TraceParent>) -> Disposition {
        let item = match self.pending_item(&message).await {
            Some(Some(item)) => item,
            Some(None) => return Disposition::Ack, // done, cancelled, or the job was deleted
            None => return Disposition::Requeue,
        };
        let (turn, _slot) = self.hosts.turn(&item.url).await;
        if let Turn::Later(pause) = turn {
            return self.postpone(&message, pause, trace.as_ref()).await;
        }
        let started = std::time::Instant::now();
        self.metrics.in_flight.inc();
        let fetched = self
            .fetcher
            .download(&item.url, item.project_id, item.known.as_ref())
            .await;
        self.metrics.in_flight.dec();
        if let Err(FetchError::Transient {
            retry_after: Some(pause),
            ..
        }) = &fetched
        {
            // The host asked every client to slow down, not only this download.
            self.hosts.pause(&item.url, self.retries.cap(*pause));
        }
        self.metrics
            .download_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut failure_class = "other";
        let outcome = match &fetched {
            Ok(Fetched::Stored(d)) => {
                self.metrics.bytes.inc_by(d.asset.size);
                self.metrics.video_bytes.observe(d.asset.size as f64);
                Outcome::Downloaded(Box::new(d.to_asset()))
            }
            Ok(Fetched::NotModified) => Outcome::Unchanged,
            Err(error) => match self.retries.after_failure(error, message.attempt) {
                Next::RetryIn(delay) => {
                    return self
                        .retry_later(&item, &message, error, delay, trace.as_ref())
                        .await;
                }
                Next::GiveUp(reason) => {
                    failure_class = error.class();
                    if failure_class == "refused" {
                        self.metrics.ssrf_refusals.inc();
                    }
                    Outcome::Failed(reason)
                }
            },
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
                self.metrics
                    .outcomes
                    .with_label_values(&[state.as_str()])
                    .inc();
                if state == ItemState::Failed {
                    self.metrics
                        .failures
                        .with_label_values(&[failure_class])
                        .inc();
                }
                tracing::info!(external_id = ?item.external_id, %state, "video done");
                if let Some(old) = replaced_key {
                    // Only now that the new entry is committed may the old asset go.
                    self.storage.remove(&old).await;
                }
                if let Some(seconds) = job_finished {
                    tracing::info!(seconds, "job finished");
                    self.metrics.job_seconds.observe(seconds);
                    self.relay.wake();
                }
                (Disposition::Ack, asset_used)
            }
            // A lost commit acknowledgement also lands here: ask whether the asset is in use.
            Some(Recorded::AlreadyDone) => (Disposition::Ack, false),
            None => (Disposition::Requeue, false),
        };
        if let Some(key) = downloaded_key.filter(|_| !asset_used) {
            let referenced = until_ok(&self.shutdown, || async {
                let client = self.pool.get().await?;
                entries::is_referenced(&client, key).await
            })
            .await;
            if referenced == Some(false) {
                self.storage.remove(key).await;
            }
        }
        disposition
    }

    /// The message's video if it is still pending: carried in the message (only its state
    /// is read) or, for messages without it, loaded. `None` at shutdown.
    async fn pending_item(&self, message: &FetchVideo) -> Option<Option<Item>> {
        if let Some(item) = Item::from_message(message) {
            let pending = until_ok(&self.shutdown, || async {
                let client = self.pool.get().await?;
                items::is_pending(&client, &message.job_id, message.idx).await
            })
            .await?;
            return Some(pending.then_some(item));
        }
        let item = until_ok(&self.shutdown, || {
            load::item(&self.pool, &self.jobs, &message.job_id, message.idx)
        })
        .await?;
        Some(item.filter(|item| item.state == ItemState::Pending))
    }

    /// Handles a fetch message the broker set aside after too many deliveries without an
    /// ack (the worker crashed or was killed each time): its video fails with that reason,
    /// so the job still finishes.
    async fn handle_dead(&self, message: Delivered) -> Disposition {
        let Some(fetch) = message.decode::<FetchVideo>() else {
            return Disposition::Ack;
        };
        let span = tracing::info_span!("dead_video", job = %fetch.job_id, idx = fetch.idx, trace_id = message.trace_id());
        let done = until_ok(&self.shutdown, || self.fail_dead_video(&fetch))
            .instrument(span)
            .await;
        match done {
            // The outcome is in PostgreSQL, where the status endpoint shows it.
            Some(()) => Disposition::Ack,
            None => Disposition::Requeue,
        }
    }

    async fn fail_dead_video(&self, fetch: &FetchVideo) -> anyhow::Result<()> {
        let Some(item) = load::item(&self.pool, &self.jobs, &fetch.job_id, fetch.idx).await? else {
            return Ok(());
        };
        let outcome = Outcome::Failed(retry_policy::dead_letter_reason());
        let recorded = outcomes::record(&self.pool, &[(item, outcome)]).await?;
        if let Some(Recorded::Done { job_finished, .. }) = recorded.first() {
            tracing::error!("video dead-lettered; marked failed");
            self.metrics.dead_letters.inc();
            self.metrics
                .outcomes
                .with_label_values(&[ItemState::Failed.as_str()])
                .inc();
            self.metrics
                .failures
                .with_label_values(&["dead_lettered"])
                .inc();
            if let Some(seconds) = job_finished {
                self.metrics.job_seconds.observe(*seconds);
                self.relay.wake();
            }
        }
        Ok(())
    }

    /// Hands the message back through a delay queue, unchanged, because its source host
    /// asked for a pause.
    async fn postpone(
        &self,
        message: &FetchVideo,
        pause: std::time::Duration,
        trace: Option<&TraceParent>,
    ) -> Disposition {
        let reason = format!(
            "the source host asked for a pause (Retry-After); trying again in {} s",
            pause.as_secs()
        );
        let noted = until_ok(&self.shutdown, || async {
            let client = self.pool.get().await?;
            items::note_waiting(&client, &message.job_id, message.idx, &reason).await
        })
        .await;
        if noted.is_none() {
            return Disposition::Requeue;
        }
        let outgoing = Outgoing {
            routing_key: queue::FETCH.into(),
            payload: serde_json::to_vec(message).expect("messages serialize"),
            delay: Some(pause),
            traceparent: trace.map(|t| t.child().header()),
        };
        match self.publisher.publish(&[outgoing]).await {
            Ok(()) => {
                tracing::info!(?pause, "the source host asked for a pause; trying later");
                Disposition::Ack
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot postpone; handing the message back");
                Disposition::Requeue
            }
        }
    }

    /// Notes the failure and republishes the message through a delay queue.
    async fn retry_later(
        &self,
        item: &Item,
        message: &FetchVideo,
        error: &FetchError,
        delay: std::time::Duration,
        trace: Option<&TraceParent>,
    ) -> Disposition {
        let reason = format!(
            "try {} failed: {error}; trying again in {} s",
            message.attempt + 1,
            delay.as_secs()
        );
        let noted = until_ok(&self.shutdown, || async {
            let client = self.pool.get().await?;
            items::note_retry(&client, &item.job_id, item.idx, &reason).await
        })
        .await;
        if noted.is_none() {
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
            traceparent: trace.map(|t| t.child().header()),
        };
        match self.publisher.publish(&[outgoing]).await {
            Ok(()) => {
                self.metrics.retries.inc();
                tracing::info!(%error, ?delay, "download failed; will try again");
                Disposition::Ack
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot schedule a retry; handing the message back");
                Disposition::Requeue
            }
        }
    }
}
