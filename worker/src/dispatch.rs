//! The dispatcher: keeps the fetch queue topped up to about twice the consuming workers'
//! download slots (at most `fetch.dispatch_ahead` ready messages), taking videos from
//! PostgreSQL (`store::dispatch`) in fair order (`fair`). A short queue is what makes the
//! order matter: a new batch waits behind at most that many videos of other jobs. Every
//! worker runs one; a PostgreSQL advisory lock lets one at a time hand out videos, so any
//! number of workers need no coordinator besides PostgreSQL and RabbitMQ. A round's videos go
//! out several to a message (`fetch.videos_per_message`, see `pack_size`), since the broker's
//! work is per message.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use prometheus::{IntCounter, Registry};
use tokio_util::sync::CancellationToken;
use video_import_shared::messages::{Dispatched, FetchVideo, FetchVideos};
use video_import_shared::metrics::register;
use video_import_shared::periodic;
use video_import_shared::queue::{self, Outgoing, Publisher};
use video_import_shared::store::dispatch;

use crate::fair::{self, Demand};

/// Pause between two looks at the queue.
const TICK: Duration = Duration::from_millis(50);
/// Most jobs considered in one round (the least recently served).
const MAX_JOBS: i64 = 5_000;

/// Ready messages kept per download slot of the consuming workers: enough to cover the
/// downloads that finish between two rounds when sources are fast.
const READY_PER_SLOT: u32 = 2;

/// Tops up the fetch queue.
pub struct Dispatcher {
    pool: Pool,
    publisher: Arc<Publisher>,
    /// Most ready messages to keep in the fetch queue (`fetch.dispatch_ahead`).
    ahead: u32,
    /// Download slots of one worker (`fetch.concurrency`); every worker is assumed alike.
    slots: u32,
    /// Most videos in one message (`fetch.videos_per_message`).
    per_message: u32,
    /// Videos per message of the last round, to count the ready messages in videos.
    last_per_message: AtomicU32,
    dispatched: IntCounter,
    messages: IntCounter,
}

impl Dispatcher {
    /// A dispatcher keeping at most `ahead` messages ready for workers of `slots` downloads
    /// each; its counter goes to `registry`.
    pub fn new(
        pool: Pool,
        publisher: Arc<Publisher>,
        ahead: u32,
        slots: u32,
        per_message: u32,
        registry: &Registry,
    ) -> Self {
        let dispatched = IntCounter::new(
            "videos_dispatched_total",
            "Videos handed from PostgreSQL to the fetch queue by this worker's dispatcher",
        )
        .expect("valid metric");
        register(registry, &dispatched);
        let messages = IntCounter::new(
            "fetch_messages_dispatched_total",
            "Fetch messages this worker's dispatcher published for those videos (several videos each since v5)",
        )
        .expect("valid metric");
        register(registry, &messages);
        Self {
            pool,
            publisher,
            ahead,
            slots,
            per_message,
            last_per_message: AtomicU32::new(1),
            dispatched,
            messages,
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        periodic::every(
            TICK,
            shutdown,
            "dispatcher cannot hand out videos; accepted jobs wait in PostgreSQL until it can",
            "dispatcher recovered",
            || self.round(),
        )
        .await;
    }

    /// One round: hands out as many videos as the queue has room for; returns how many.
    pub async fn round(&self) -> anyhow::Result<usize> {
        let depth = self.publisher.depth(queue::FETCH).await?;
        let target = target(self.ahead, self.slots, depth.consumers);
        let ready = depth.ready * self.last_per_message.load(Ordering::Relaxed);
        let budget = target.saturating_sub(ready);
        // Small top-ups cost a transaction each and change nothing for fairness.
        if budget == 0 || budget < target / 4 {
            return Ok(0);
        }
        let mut client = self.pool.get().await.context("connecting to dispatch")?;
        let tx = client
            .transaction()
            .await
            .context("starting a dispatch round")?;
        if !dispatch::lock(&tx).await? {
            return Ok(0);
        }
        let waiting = dispatch::waiting(&tx, MAX_JOBS).await?;
        if waiting.is_empty() {
            return Ok(0);
        }
        let demands: Vec<Demand<_>> = waiting
            .iter()
            .map(|w| Demand {
                project: w.project_id,
                served: w.served_at,
                remaining: w.remaining(),
            })
            .collect();
        // Whole messages per project where the round cannot give everyone one: see `fair`.
        let takes = fair::allocate(budget, self.per_message, &demands);
        let ranges: Vec<(&dispatch::Waiting, i32)> = waiting
            .iter()
            .zip(takes)
            .filter(|(_, take)| *take > 0)
            .map(|(job, take)| (job, job.next_idx + take as i32))
            .collect();
        let videos = dispatch::videos(&tx, &ranges).await?;
        let traces: std::collections::HashMap<&str, Option<&String>> = ranges
            .iter()
            .map(|(job, _)| (job.job_id.as_str(), job.traceparent.as_ref()))
            .collect();
        let count = videos.len();
        let dispatched: Vec<Dispatched> = videos
            .iter()
            .map(|video| Dispatched {
                fetch: FetchVideo::first_try(video),
                traceparent: traces
                    .get(video.job_id.as_str())
                    .copied()
                    .flatten()
                    .cloned(),
            })
            .collect();
        let size = pack_size(count as u32, depth.consumers, self.per_message);
        let messages: Vec<Outgoing> = FetchVideos::pack(dispatched, size as usize);
        let handed: Vec<(String, i32, i32)> = ranges
            .iter()
            .map(|(job, end)| (job.job_id.clone(), job.next_idx, *end))
            .collect();
        // Published before the commit: a crash in between hands the range out again, and
        // the items' `pending` guard makes the second message a no-op.
        self.publisher.publish(&messages).await?;
        dispatch::advance(&tx, &handed).await?;
        tx.commit().await.context("committing a dispatch round")?;
        self.last_per_message.store(
            count.div_ceil(messages.len().max(1)) as u32,
            Ordering::Relaxed,
        );
        self.dispatched.inc_by(count as u64);
        self.messages.inc_by(messages.len() as u64);
        Ok(count)
    }
}

/// Ready messages to keep: what the consuming workers' slots get through between rounds,
/// at most `ahead`. A short queue is what makes dispatch fair: a new batch waits behind at
/// most this many videos of other jobs, whatever their backlog.
fn target(ahead: u32, slots: u32, consumers: u32) -> u32 {
    (consumers.max(1) * slots * READY_PER_SLOT).clamp(1, ahead)
}

/// Videos per message for a round of `videos`: `most`, unless that would leave a consuming
/// worker without a message of the round. Messages are kept full because the broker's work
/// is per message, and a worker's prefetch (`import::prefetch`) counts on full ones: it takes
/// smaller ones beyond it only by pulling them one at a time (`import::Held`).
fn pack_size(videos: u32, consumers: u32, most: u32) -> u32 {
    (videos / consumers.max(1)).clamp(1, most.max(1))
}

#[cfg(test)]
mod tests {
    use super::{pack_size, target};

    #[test]
    fn a_round_is_packed_in_full_messages_while_every_worker_gets_one() {
        assert_eq!(
            pack_size(256, 2, 16),
            16,
            "a full round: the most per message"
        );
        assert_eq!(
            pack_size(32, 2, 16),
            16,
            "the smallest top-up: full messages still"
        );
        assert_eq!(pack_size(20, 2, 16), 10, "one message for each worker");
        assert_eq!(pack_size(1, 2, 16), 1, "a trickle goes out one video each");
        assert_eq!(pack_size(256, 0, 16), 16, "no consumer yet counts as one");
        assert_eq!(pack_size(256, 2, 1), 1, "1 configured: never packed");
    }

    #[test]
    fn the_queue_grows_with_the_workers_up_to_the_configured_bound() {
        assert_eq!(
            target(512, 32, 0),
            64,
            "no consumer yet: one worker's worth"
        );
        assert_eq!(target(512, 32, 2), 128);
        assert_eq!(target(512, 32, 20), 512);
        assert_eq!(target(512, 0, 2), 1);
    }
}
