//! A RabbitMQ consumer loop that survives broker restarts: it reconnects with backoff,
//! re-declares the topology, handles deliveries concurrently up to the prefetch (and beyond
//! it, pulling one message at a time, while the handlers say they have [`Room`]), and on
//! shutdown stops consuming and lets in-flight work finish within a grace period.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use futures::future::BoxFuture;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::AmqpLink;
use crate::queue::{self, Topology};
use crate::trace::TraceParent;

/// What to do with a delivery once its handler is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The outcome is durable: remove the message.
    Ack,
    /// Not handled (shutting down, dependency down): give it back for redelivery.
    Requeue,
    /// It cannot be handled, ever, by this binary (a message version it does not read):
    /// the broker dead-letters it, and the dead-letter consumer settles it.
    Reject(String),
}

impl Disposition {
    /// What to do with a message whose parts were handled one by one (the videos of a fetch
    /// message): acknowledged when every part is done; handed back when any is not (the done
    /// ones are skipped when it comes again); a rejected part rejects the message.
    pub fn of_parts(parts: impl IntoIterator<Item = Disposition>) -> Disposition {
        let mut all = Disposition::Ack;
        for part in parts {
            match part {
                Disposition::Ack => {}
                Disposition::Requeue => {
                    if all == Disposition::Ack {
                        all = Disposition::Requeue;
                    }
                }
                reject @ Disposition::Reject(_) => return reject,
            }
        }
        all
    }
}

/// A delivered message.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The routing key it was published with (kept when it is dead-lettered).
    pub routing_key: String,
    pub data: Vec<u8>,
    /// The W3C trace context it was published with.
    pub traceparent: Option<TraceParent>,
    /// Why the broker last dead-lettered it (`x-death`'s latest reason: `rejected`,
    /// `delivery_limit`, `expired`), if it ever did.
    pub death: Option<String>,
}

impl Delivered {
    /// The trace id the message carries ("" without one), for its log span.
    pub fn trace_id(&self) -> &str {
        self.traceparent
            .as_ref()
            .map_or("", |t| t.trace_id.as_str())
    }

    /// Whether the broker dead-lettered it because a consumer rejected it (a binary that
    /// could not read it), rather than because it exceeded its delivery limit.
    pub fn was_rejected(&self) -> bool {
        self.death.as_deref() == Some("rejected")
    }
}

/// Handles one message. It is called in the consumer's loop, one delivery after the other,
/// and the work it returns runs on a task of its own: a handler that counts what it holds
/// (see [`Room`]) counts it before the next delivery is taken.
pub type Handler = Arc<dyn Fn(Delivered) -> BoxFuture<'static, Disposition> + Send + Sync>;

/// Whether the handlers could start more work now. A prefetch counts messages, whatever they
/// hold (a worker's fetch message holds one video or many): a consumer that holds its whole
/// prefetch asks this every [`ROOM_LOOK`] and, while it says yes, pulls messages beyond the
/// prefetch, one at a time (`basic.get`), so that small messages do not leave its handlers idle.
/// A pull that finds the queue empty is paid for all the same (on a quorum queue it is a log
/// entry), so after one the looks slow down ([`PullPace`]).
pub type Room = Arc<dyn Fn() -> bool + Send + Sync>;

/// How often a consumer that holds its whole prefetch asks its [`Room`].
pub const ROOM_LOOK: Duration = Duration::from_millis(20);

/// Longest wait between two pulls while the queue is found empty.
const SLOWEST_PULL: Duration = Duration::from_secs(1);

/// When to pull next: at once while pulls find messages, then, after each look that found
/// the queue empty, twice as long as before (from [`ROOM_LOOK`] up to [`SLOWEST_PULL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullPace {
    /// Wait before the next pull; zero while messages are found.
    pub wait: Duration,
}

/// What one look found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pulled {
    /// The queue has more: look again at the next tick.
    More,
    /// It is empty now, whether or not this look took messages first.
    Emptied {
        /// Messages taken before it was.
        took: usize,
    },
    /// Not asked: the consumer had room in its prefetch, the handlers had none, or shutdown.
    NotAsked,
}

impl PullPace {
    /// The pace after a look that found `pulled`.
    pub fn after(self, pulled: Pulled) -> PullPace {
        let wait = match pulled {
            Pulled::More | Pulled::NotAsked => Duration::ZERO,
            Pulled::Emptied { took } if took > 0 => ROOM_LOOK,
            Pulled::Emptied { .. } => (self.wait * 2).clamp(ROOM_LOOK, SLOWEST_PULL),
        };
        PullPace { wait }
    }
}

/// Most messages pulled beyond the prefetch at one look: a bound for handlers that take a
/// message without counting it (one they cannot read), not a limit met in practice.
const MOST_PULLED_AT_ONCE: usize = 256;

/// A handler that calls `handle` with the shared `target` and each message.
pub fn handler<T, F, Fut>(target: Arc<T>, handle: F) -> Handler
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>, Delivered) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Disposition> + Send + 'static,
{
    Arc::new(move |message| Box::pin(handle(target.clone(), message)))
}

/// Where and how to consume.
#[derive(Clone)]
pub struct ConsumerConfig {
    pub url: String,
    pub topology: Topology,
    /// Queue name (see [`Topology::queue`]).
    pub queue: String,
    /// Deliveries handled at once.
    pub prefetch: u16,
    /// When set, messages are taken beyond the prefetch while it says there is room.
    pub room: Option<Room>,
    /// How long in-flight work may take to finish after shutdown is requested.
    pub grace: Duration,
    /// Where the link's health is reported.
    pub link: Option<AmqpLink>,
}

/// Consumes until `shutdown` is cancelled, reconnecting after any broker failure.
pub async fn run(config: ConsumerConfig, handler: Handler, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let mut backoff = crate::retry::FIRST_BACKOFF;
    while !shutdown.is_cancelled() {
        let result = session(&config, &handler, &tracker, &shutdown).await;
        if let Some(link) = &config.link {
            link.down();
        }
        match result {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(queue = %config.queue, error = %format!("{error:#}"), retry_in = ?backoff, "consumer lost its broker connection; reconnecting");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = crate::retry::next_backoff(backoff);
    }
    tracker.close();
    if tokio::time::timeout(config.grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(queue = %config.queue, "grace period over; unfinished deliveries go back to the queue");
    }
}

/// One connection's worth of consuming; `Ok` only when shutdown ended it.
async fn session(
    config: &ConsumerConfig,
    handler: &Handler,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let connection = queue::connect(&config.url).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    config.topology.declare(&channel).await?;
    let tag = format!("{}-{}", config.queue, std::process::id());
    let mut consumer = channel
        .basic_consume(
            config.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %config.queue, prefetch = config.prefetch, "consuming");
    if let Some(link) = &config.link {
        link.up();
    }
    // Deliveries of the consumer (not pulled ones) whose handling is not settled: the
    // broker sends no more while they fill the prefetch.
    let pushed = Arc::new(AtomicUsize::new(0));
    let mut look = tokio::time::interval(ROOM_LOOK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pace = PullPace::default();
    let mut looked = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                // Keep the connection open so in-flight work can still ack.
                tracker.close();
                let _ = tokio::time::timeout(config.grace, tracker.wait()).await;
                // Bounded: a broker that went away meanwhile never answers the close.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    connection.close(200, "shutting down".into()),
                )
                .await;
                return Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    pushed.fetch_add(1, Ordering::AcqRel);
                    handle_on_task(handler, tracker, delivery, Some(pushed.clone()));
                }
                Some(Err(error)) => return Err(error.into()),
                None => return Err(anyhow!("the broker ended the consumer")),
            },
            now = look.tick(), if config.room.is_some() => {
                if now.duration_since(looked) >= pace.wait {
                    let pulled = pull_beyond_prefetch(config, &channel, handler, tracker, &pushed, shutdown).await?;
                    if pulled != Pulled::NotAsked {
                        looked = now;
                    }
                    pace = pace.after(pulled);
                }
            }
        }
    }
}

/// Takes messages one at a time while the consumer holds its whole prefetch and the handlers
/// have room, until the queue is empty.
async fn pull_beyond_prefetch(
    config: &ConsumerConfig,
    channel: &lapin::Channel,
    handler: &Handler,
    tracker: &TaskTracker,
    pushed: &AtomicUsize,
    shutdown: &CancellationToken,
) -> anyhow::Result<Pulled> {
    let Some(room) = &config.room else {
        return Ok(Pulled::NotAsked);
    };
    let mut took = 0;
    while took < MOST_PULLED_AT_ONCE {
        let full = pushed.load(Ordering::Acquire) >= usize::from(config.prefetch);
        if !full || !room() || shutdown.is_cancelled() {
            break;
        }
        let get = channel.basic_get(config.queue.as_str().into(), BasicGetOptions::default());
        // A broker slow to answer does not hold up shutdown: a message it hands over later
        // goes back to the queue when the connection closes.
        let pulled = tokio::select! {
            _ = shutdown.cancelled() => break,
            pulled = get => pulled?,
        };
        let Some(pulled) = pulled else {
            return Ok(Pulled::Emptied { took });
        };
        took += 1;
        let left = pulled.message_count;
        handle_on_task(handler, tracker, pulled.delivery, None);
        if left == 0 {
            return Ok(Pulled::Emptied { took });
        }
    }
    Ok(if took > 0 {
        Pulled::More
    } else {
        Pulled::NotAsked
    })
}

/// Calls the handler with the delivery, and settles the delivery with the broker on a task of
/// its own when the handler's work is done; `pushed` is counted down then.
fn handle_on_task(
    handler: &Handler,
    tracker: &TaskTracker,
    mut delivery: lapin::message::Delivery,
    pushed: Option<Arc<AtomicUsize>>,
) {
    let message = Delivered {
        routing_key: delivery.routing_key.to_string(),
        // Only its acker and routing key are used after this: the body is moved, not copied.
        data: std::mem::take(&mut delivery.data),
        traceparent: traceparent(&delivery.properties),
        death: death_reason(&delivery.properties),
    };
    let work = handler(message);
    tracker.spawn(async move {
        let disposition = work.await;
        // A failed ack means the channel is gone; the broker redelivers.
        let _ = match disposition {
            Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
            Disposition::Requeue => {
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
            Disposition::Reject(reason) => {
                tracing::warn!(%reason, routing_key = %delivery.routing_key, "dead-lettering a message this binary cannot read");
                delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..Default::default()
                    })
                    .await
            }
        };
        if let Some(pushed) = pushed {
            pushed.fetch_sub(1, Ordering::AcqRel);
        }
    });
}

/// The `traceparent` header of a delivery, if it carries a valid one.
fn traceparent(properties: &lapin::BasicProperties) -> Option<TraceParent> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(crate::trace::HEADER)? {
        lapin::types::AMQPValue::LongString(text) => {
            TraceParent::parse(&String::from_utf8_lossy(text.as_bytes()))
        }
        _ => None,
    }
}

/// The reason of the latest `x-death` entry of a delivery (RabbitMQ puts the latest first).
fn death_reason(properties: &lapin::BasicProperties) -> Option<String> {
    use lapin::types::AMQPValue;
    let headers = properties.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else {
        return None;
    };
    match latest.inner().get("reason")? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Disposition::{self, Ack, Reject, Requeue};
    use super::{PullPace, Pulled, ROOM_LOOK, SLOWEST_PULL};

    #[test]
    fn pulls_slow_down_while_the_queue_is_found_empty_and_resume_when_it_is_not() {
        let start = PullPace::default();
        assert_eq!(start.wait, Duration::ZERO, "the first look pulls at once");
        let mut pace = start;
        let mut waits = Vec::new();
        for _ in 0..8 {
            pace = pace.after(Pulled::Emptied { took: 0 });
            waits.push(pace.wait.as_millis());
        }
        assert_eq!(waits, [20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(pace.after(Pulled::More).wait, Duration::ZERO);
        assert_eq!(
            pace.after(Pulled::Emptied { took: 3 }).wait,
            ROOM_LOOK,
            "it took the last messages: the next look comes soon, not at once"
        );
        assert_eq!(
            pace.after(Pulled::NotAsked).wait,
            Duration::ZERO,
            "not asked (full handlers, room in the prefetch): ask at once when that changes"
        );
        assert!(SLOWEST_PULL >= ROOM_LOOK);
    }

    #[test]
    fn a_message_of_parts_is_acknowledged_only_when_every_part_is_done() {
        assert_eq!(Disposition::of_parts([Ack, Ack]), Ack);
        assert_eq!(Disposition::of_parts([Ack, Requeue, Ack]), Requeue);
        assert_eq!(
            Disposition::of_parts([Requeue, Reject("v9".into())]),
            Reject("v9".into())
        );
        assert_eq!(Disposition::of_parts([]), Ack);
    }
}
