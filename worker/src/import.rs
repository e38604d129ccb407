//! What happens to one fetch message: each of its videos (one, or several since v5) is handled
//! on its own, within the worker's download slots, and the message is acknowledged when all are
//! recorded. What happens to one video: take one of the worker's download slots, check that
//! it is still pending, take a slot of its source host, download it, give both slots back,
//! record the outcome (a group per transaction, see `group_commit`); a failure the retry
//! policy says to try again, or a pause the source host asked for, goes back through a
//! RabbitMQ delay queue. A 304 (or a checksum naming the
//! stored file) whose stored file the verifier marked damaged meanwhile is downloaded again
//! at once, without conditions. A message this binary cannot read is rejected, for `settle`
//! to deal with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use video_import_shared::consume::{Delivered, Disposition};
use video_import_shared::messages::{FetchVideo, FetchVideos};
use video_import_shared::outbox::Relay;
use video_import_shared::queue::Publisher;
use video_import_shared::retry::until_ok;
use video_import_shared::storage::Storage;
use video_import_shared::store::outcomes::{Outcome, Recorded};
use video_import_shared::store::{entries, items, Item};
use video_import_shared::trace::{self, TraceParent};

use crate::error::{FailureClass, FetchError};
use crate::fetch::{Fetched, Fetcher};
use crate::group_commit::{PendingCheck, Recorder};
use crate::hosts::{SourceHosts, Turn};
use crate::metrics::WorkerMetrics;
use crate::retry_policy::{self, AfterDamage, Next, RetryPolicy};

/// Fetch messages a worker holds at once (its prefetch): enough for twice its download slots
/// when the messages are full (`per_message` videos each), so that it never waits for the
/// broker, and no more: videos held beyond that would wait in this worker's hands while
/// another's slots are free, and a new batch would wait behind them (fair dispatch keeps the
/// queue short, so what workers hold must stay short too). At least one message, even one
/// larger than that; smaller messages (a retry, a part of a split message, a trickle) and a
/// message's last slow videos are made up for by pulling more while slots would idle
/// ([`Held`]).
pub fn prefetch(concurrency: usize, per_message: u32) -> usize {
    (2 * concurrency / per_message.max(1) as usize).max(1)
}

/// The videos a worker holds: waiting for a download slot, downloading, or being recorded.
/// Its prefetch counts messages, and a message holds one video up to
/// `fetch.videos_per_message`: while the videos
/// held fall short of the slots, the consumer takes messages beyond the prefetch, so that
/// what the worker holds is counted in videos (see `consume::Room`).
pub struct Held {
    /// The count, exported as `videos_held`.
    videos: IntGauge,
    slots: usize,
}

impl Held {
    /// Counts in `videos` the videos held by a worker of `slots` download slots.
    pub fn new(videos: IntGauge, slots: usize) -> Arc<Self> {
        Arc::new(Self { videos, slots })
    }

    /// Whether some of the worker's slots would idle with what it holds.
    pub fn has_room(&self) -> bool {
        usize::try_from(self.videos.get()).unwrap_or(0) < self.slots
    }

    /// Counts one more video held, until the returned guard is dropped.
    fn one(self: &Arc<Self>) -> HeldVideo {
        self.videos.inc();
        HeldVideo(self.clone())
    }
}

/// One video counted in [`Held`] while this lives.
struct HeldVideo(Arc<Held>);

impl Drop for HeldVideo {
    fn drop(&mut self) {
        self.0.videos.dec();
    }
}

/// A video's turns to download: one of the worker's download slots and, where its source
/// host is limited, one of the host's; both given back together when the download ends, so
/// that the next video downloads while this one is recorded (a slot held through the
/// recording too left the worker latency-bound where storing is fast: docs/benchmarks.md,
/// twelfth round).
struct Turns<'a> {
    _download: SemaphorePermit<'a>,
    _host: Option<OwnedSemaphorePermit>,
}

/// How often a running download looks whether its video is still pending.
const CANCEL_POLL: Duration = Duration::from_secs(1);

/// Everything a delivery handler needs; shared by all handlers through an `Arc`.
pub struct Importer {
    pub pool: Pool,
    /// Hands outcomes to the group-commit tasks.
    pub recorder: Recorder,
    /// Checks whether videos are still pending, a group per query.
    pub pending: PendingCheck,
    pub fetcher: Fetcher,
    /// Download slots and pauses per source host.
    pub hosts: Arc<SourceHosts>,
    pub storage: Storage,
    pub retries: RetryPolicy,
    /// Publishes retries into the delay queues.
    pub publisher: Arc<Publisher>,
    /// Woken when a job finished, to publish its webhook message at once.
    pub relay: Relay,
    pub metrics: WorkerMetrics,
    /// The worker's download slots (`fetch.concurrency`), shared by the videos of every
    /// message it holds.
    pub slots: tokio::sync::Semaphore,
    /// The videos it holds, counted as each message is taken.
    pub held: Arc<Held>,
    /// Counts the times this worker found a video it holds no longer pending (a check said
    /// so, or a download was stopped): a video that waited for its host's slot checks again
    /// only if this moved meanwhile.
    pub cancels_seen: AtomicU64,
    pub shutdown: CancellationToken,
}

impl Importer {
    /// Takes one fetch message: its videos count as held at once, before the consumer takes
    /// the next message; the returned work handles them side by side.
    pub fn take(
        self: Arc<Self>,
        delivered: Delivered,
    ) -> impl std::future::Future<Output = Disposition> + Send + 'static {
        let videos =
            FetchVideos::decode(&delivered.data, delivered.traceparent.as_ref()).map(|videos| {
                let held = videos.into_iter().map(|v| (v, self.held.one()));
                held.collect::<Vec<_>>()
            });
        async move {
            let videos = match videos {
                Ok(videos) => videos,
                Err(unreadable) => return Disposition::Reject(unreadable.to_string()),
            };
            let handled = futures::future::join_all(
                videos
                    .into_iter()
                    .map(|(video, held)| self.handle_video(video.trace(), video.fetch, held)),
            )
            .await;
            Disposition::of_parts(handled)
        }
    }

    /// Handles one video, downloading it in one of the worker's download slots; it stops
    /// counting as held when this returns.
    async fn handle_video(
        &self,
        trace: Option<TraceParent>,
        message: FetchVideo,
        _held: HeldVideo,
    ) -> Disposition {
        let Some(slot) = self.download_slot().await else {
            return Disposition::Requeue;
        };
        let trace_id = trace.as_ref().map_or("", |t| t.trace_id.as_str());
        let span = tracing::info_span!("video", job = %message.job_id, idx = message.idx, attempt = message.attempt, trace_id);
        // Exported as a child of the span that sent the message: the API's request for a
        // first try, the previous try for a retry.
        trace::adopt(&span, trace.as_ref());
        self.import(message, trace, slot).instrument(span).await
    }

    /// One of the worker's download slots; `None` once shutdown has come (the video, still
    /// pending, goes back to the queue for a worker that stays).
    async fn download_slot(&self) -> Option<SemaphorePermit<'_>> {
        let slot = self.slots.acquire().await.ok()?;
        (!self.shutdown.is_cancelled()).then_some(slot)
    }

    async fn import(
        &self,
        message: FetchVideo,
        trace: Option<TraceParent>,
        slot: SemaphorePermit<'_>,
    ) -> Disposition {
        let item = message.item();
        // Read before the check: a cancel noticed any time after it counts.
        let cancels_before = self.cancels_seen.load(Ordering::Acquire);
        match self.is_pending(&item).await {
            Some(true) => {}
            Some(false) => return Disposition::Ack, // done, cancelled, or the job was deleted
            None => return Disposition::Requeue,
        }
        let (turn, host_slot) = self.hosts.turn(&item.url).await;
        if let Turn::Later(pause) = turn {
            return self.paused(&item, &message, pause, trace.as_ref()).await;
        }
        if turn == Turn::GoAfterWait && self.cancels_seen.load(Ordering::Acquire) != cancels_before
        {
            // The job may have been cancelled while the video waited for the host's slot
            // (the slot is often one a download stopped by that cancel just gave back).
            // Asked only when this worker noticed a cancel meanwhile: otherwise a download
            // of a cancelled video is stopped by its own look within `CANCEL_POLL`.
            match self.is_pending(&item).await {
                Some(true) => {}
                Some(false) => return Disposition::Ack,
                None => return Disposition::Requeue,
            }
        }
        let turns = Turns {
            _download: slot,
            _host: host_slot,
        };
        self.fetch_and_record(&item, &message, trace.as_ref(), false, turns)
            .await
    }

    /// The source host asked for a pause this long: the same message goes back through a
    /// delay queue, unchanged (not a failed try of its own).
    async fn paused(
        &self,
        item: &Item,
        message: &FetchVideo,
        pause: Duration,
        trace: Option<&TraceParent>,
    ) -> Disposition {
        let reason = format!(
            "the source host asked for a pause (Retry-After); trying again in {} s",
            pause.as_secs()
        );
        self.later(item, message.clone(), pause, Waited::Paused(reason), trace)
            .await
    }

    /// Downloads the video in its turns (`turns`, given back as soon as the download is
    /// over: recording it neither downloads nor touches the source) and records the outcome
    /// (or hands it to a delay queue); `fresh`: with no conditional request and no
    /// checksum-match skip.
    async fn fetch_and_record(
        &self,
        item: &Item,
        message: &FetchVideo,
        trace: Option<&TraceParent>,
        fresh: bool,
        turns: Turns<'_>,
    ) -> Disposition {
        let started = std::time::Instant::now();
        self.metrics.in_flight.inc();
        let fetched = self.download_while_pending(item, fresh).await;
        self.metrics.in_flight.dec();
        if let Err(FetchError::Stopped) = fetched {
            // Noted before the slots are given back: the video that gets one looks again.
            self.cancels_seen.fetch_add(1, Ordering::AcqRel);
            drop(turns);
            tracing::info!("download stopped: the job was cancelled");
            return Disposition::Ack;
        }
        drop(turns);
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
        let mut failure_class = FailureClass::Other;
        let outcome = match &fetched {
            Ok(Fetched::Stored(d)) => {
                self.metrics.bytes.inc_by(d.asset.size);
                self.metrics.video_bytes.observe(d.asset.size as f64);
                Outcome::Downloaded(Box::new(d.to_asset()))
            }
            Ok(Fetched::NotModified) => Outcome::Unchanged,
            Err(error) => match self.retries.after_failure(error, message.attempt) {
                Next::RetryIn(delay) => {
                    let reason = format!(
                        "try {} failed: {error}; trying again in {} s",
                        message.attempt + 1,
                        delay.as_secs()
                    );
                    return self
                        .later(
                            item,
                            message.next_try(),
                            delay,
                            Waited::Failed(reason),
                            trace,
                        )
                        .await;
                }
                Next::GiveUp(reason) => {
                    failure_class = error.class();
                    if failure_class == FailureClass::Refused {
                        self.metrics.ssrf_refusals.inc();
                    }
                    Outcome::Failed(reason)
                }
            },
        };
        let downloaded_key = match fetched {
            Ok(Fetched::Stored(d)) => Some(d.asset.key),
            _ => None,
        };
        let mut recorded = self
            .recorder
            .record(item.clone(), outcome, trace::passed_on(trace))
            .await;
        if recorded == Some(Recorded::DamagedMeanwhile) {
            match retry_policy::after_damaged_meanwhile(fresh) {
                AfterDamage::DownloadAgain => {
                    tracing::info!("the stored file was found damaged while the video was on its way: downloading it again");
                    let Some(slot) = self.download_slot().await else {
                        return Disposition::Requeue;
                    };
                    let (turn, host_slot) = self.hosts.turn(&item.url).await;
                    if let Turn::Later(pause) = turn {
                        return self.paused(item, message, pause, trace).await;
                    }
                    let turns = Turns {
                        _download: slot,
                        _host: host_slot,
                    };
                    return Box::pin(self.fetch_and_record(item, message, trace, true, turns))
                        .await;
                }
                AfterDamage::GiveUp(reason) => {
                    failure_class = FailureClass::Storage;
                    recorded = self
                        .recorder
                        .record(
                            item.clone(),
                            Outcome::Failed(reason),
                            trace::passed_on(trace),
                        )
                        .await;
                }
            }
        }
        let (disposition, asset_used) = match recorded {
            Some(Recorded::Done {
                state,
                job_finished,
                asset_used,
                replaced_key,
            }) => {
                self.metrics.finished(state, failure_class);
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
            // (Damaged meanwhile was answered above; were it not, the video is still pending
            // and its message must stay.)
            Some(Recorded::DamagedMeanwhile) | None => (Disposition::Requeue, false),
        };
        if let Some(key) = downloaded_key.filter(|_| !asset_used) {
            let referenced = until_ok(&self.shutdown, || async {
                let client = self.pool.get().await?;
                entries::is_referenced(&client, &key).await
            })
            .await;
            if referenced == Some(false) {
                self.storage.remove(&key).await;
            }
        }
        disposition
    }

    /// Whether the message's video is still pending (not finished, failed or cancelled);
    /// `None` at shutdown.
    async fn is_pending(&self, item: &Item) -> Option<bool> {
        let pending = until_ok(&self.shutdown, || {
            self.pending.is_pending(&item.job_id, item.idx)
        })
        .await;
        if pending == Some(false) {
            self.cancels_seen.fetch_add(1, Ordering::AcqRel);
        }
        pending
    }

    /// Downloads the video, looking every [`CANCEL_POLL`] whether it is still pending: a
    /// cancelled job's downloads stop instead of running to their end. `fresh`: no
    /// conditional request, no skip for a checksum naming the stored file.
    async fn download_while_pending(
        &self,
        item: &Item,
        fresh: bool,
    ) -> Result<Fetched, FetchError> {
        if !fresh && self.stored_already(item).await {
            tracing::info!("the stored file matches the video's checksum: not downloaded");
            return Ok(Fetched::NotModified);
        }
        let stop = CancellationToken::new();
        let download = self.fetcher.download(
            &item.url,
            item.project_id,
            item.known.as_ref().filter(|_| !fresh),
            &item.checksum,
            &stop,
        );
        tokio::pin!(download);
        loop {
            tokio::select! {
                fetched = &mut download => return fetched,
                _ = tokio::time::sleep(CANCEL_POLL), if !stop.is_cancelled() => {
                    // Bounded: while the look waits (a database restarting), the download is
                    // not polled, so it must never wait long.
                    let look = async {
                        let client = self.pool.get().await.ok()?;
                        items::is_pending(&client, &item.job_id, item.idx).await.ok()
                    };
                    if let Ok(Some(false)) = tokio::time::timeout(CANCEL_POLL, look).await {
                        stop.cancel();
                    }
                }
            }
        }
    }

    /// Whether the video's entry already holds the file its checksum names (then there is
    /// nothing to download). A failed look just means downloading.
    async fn stored_already(&self, item: &Item) -> bool {
        if item.checksum.is_empty() {
            return false;
        }
        let look = async {
            let client = self.pool.get().await.ok()?;
            entries::stored_hashes(
                &client,
                item.project_id,
                &item.system_name,
                &item.external_id,
            )
            .await
            .ok()
            .flatten()
        };
        match look.await {
            Some((sha256, md5)) => item.checksum.matches_stored(&sha256, md5.as_deref()),
            None => false,
        }
    }

    /// Notes why the video waits, then hands `next` back through a delay queue: the video is
    /// tried again after `delay`.
    async fn later(
        &self,
        item: &Item,
        next: FetchVideo,
        delay: Duration,
        why: Waited,
        trace: Option<&TraceParent>,
    ) -> Disposition {
        let noted = until_ok(&self.shutdown, || async {
            let client = self.pool.get().await?;
            match &why {
                Waited::Failed(reason) => {
                    items::note_retry(&client, &item.job_id, item.idx, reason).await
                }
                Waited::Paused(reason) => {
                    items::note_waiting(&client, &item.job_id, item.idx, reason).await
                }
            }
        })
        .await;
        if noted.is_none() {
            return Disposition::Requeue;
        }
        let outgoing = next.outgoing(Some(delay), trace::passed_on(trace));
        match self.publisher.publish(&[outgoing]).await {
            Ok(()) => {
                if matches!(why, Waited::Failed(_)) {
                    self.metrics.retries.inc();
                }
                tracing::info!(?delay, reason = why.reason(), "trying the video later");
                Disposition::Ack
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot hand the video to the delay queue; handing the message back");
                Disposition::Requeue
            }
        }
    }
}

/// Why a video is tried later.
enum Waited {
    /// Its try failed, for this reason: a try is counted.
    Failed(String),
    /// Its source host asked every client for a pause: no try is counted.
    Paused(String),
}

impl Waited {
    fn reason(&self) -> &str {
        match self {
            Waited::Failed(reason) | Waited::Paused(reason) => reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{prefetch, Held};

    #[test]
    fn a_worker_holds_about_twice_its_download_slots_in_videos() {
        assert_eq!(
            prefetch(64, 16),
            8,
            "8 full messages: 128 videos for 64 slots"
        );
        assert_eq!(prefetch(32, 32), 2, "the defaults: 64 videos for 32 slots");
        assert_eq!(prefetch(32, 1), 64, "one video per message");
        assert_eq!(
            prefetch(16, 32),
            1,
            "one message: as many videos as two rounds of slots"
        );
        assert_eq!(
            prefetch(8, 32),
            1,
            "fewer slots than a message holds: one message still"
        );
        assert_eq!(prefetch(1, 1), 2);
    }

    #[test]
    fn a_worker_has_room_while_the_videos_it_holds_fall_short_of_its_slots() {
        let gauge = prometheus::IntGauge::new("held", "held").unwrap();
        let held = Held::new(gauge.clone(), 2);
        assert!(held.has_room(), "holding nothing");
        let first = held.one();
        assert!(held.has_room(), "one of two slots would idle");
        let second = held.one();
        assert!(!held.has_room(), "every slot taken");
        assert_eq!(gauge.get(), 2, "exported as it is counted");
        drop(first);
        assert!(held.has_room(), "a video done gives its room back");
        drop(second);
        assert_eq!(gauge.get(), 0);
    }
}
