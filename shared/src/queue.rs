//! RabbitMQ: the queue topology and a publisher with confirms that reconnects by itself.
//!
//! Topology (all names start with `amqp.prefix`, here `P`):
//! - exchange `P` (direct) routes `fetch` to quorum queue `P.fetch` and `webhook` to `P.webhook`;
//! - both dead-letter to exchange `P.dead` (fanout) → `P.dead.route` (direct) → quorum queues
//!   `P.dead.fetch` and `P.dead.webhook`, so a poison message that exceeds the delivery limit is
//!   kept, not dropped, and settled by the binary that consumes its kind;
//! - delays are fanout exchanges `P.delay.Ns` → classic queues holding messages until their
//!   per-message expiration, which then dead-letter back to `P` under their original routing key
//!   (Debian's RabbitMQ has no delayed-message plugin).

use std::collections::HashSet;
use std::time::Duration;

use anyhow::bail;
use futures::future::try_join_all;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use crate::metrics::AmqpLink;

/// Routing key of "download and upsert this video" messages.
pub const FETCH: &str = "fetch";
/// Routing key of "deliver this job's webhook" messages.
pub const WEBHOOK: &str = "webhook";

/// How often a quorum queue redelivers one message before dead-lettering it.
pub const DELIVERY_LIMIT: i64 = 20;

/// Longest a message may be held: RabbitMQ takes expirations up to 2^32 - 1 milliseconds
/// (about 49 days) and refuses the publish above that.
pub const MAX_DELAY: Duration = Duration::from_millis(u32::MAX as u64);

/// Longest a publish may wait for the broker's confirms before the link is dropped.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Names of every exchange and queue, derived from the prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    /// Topology whose names all start with `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// The main direct exchange.
    pub fn exchange(&self) -> String {
        self.prefix.clone()
    }

    /// The queue consumed for `routing_key`.
    pub fn queue(&self, routing_key: &str) -> String {
        format!("{}.{routing_key}", self.prefix)
    }

    /// Fanout exchange that every work queue dead-letters to.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Direct exchange, bound to [`Self::dead`], that sorts dead letters by routing key.
    fn dead_route(&self) -> String {
        format!("{}.dead.route", self.prefix)
    }

    /// Queue keeping the dead-lettered messages of `routing_key`, so that the binary which
    /// consumes `routing_key` also settles its dead letters.
    pub fn dead_queue(&self, routing_key: &str) -> String {
        format!("{}.dead.{routing_key}", self.prefix)
    }

    /// Exchange and queue that hold messages for `secs` seconds.
    pub fn delay(&self, secs: u64) -> String {
        format!("{}.delay.{secs}s", self.prefix)
    }

    /// Every queue name this topology may create, given the delays in use (for clean-up).
    pub fn queue_names(&self, delays: &[u64]) -> Vec<String> {
        let mut names = vec![
            self.queue(FETCH),
            self.queue(WEBHOOK),
            self.dead_queue(FETCH),
            self.dead_queue(WEBHOOK),
        ];
        names.extend(delays.iter().map(|d| self.delay(*d)));
        names
    }

    /// Every exchange name this topology may create, given the delays in use (for clean-up).
    pub fn exchange_names(&self, delays: &[u64]) -> Vec<String> {
        let mut names = vec![self.exchange(), self.dead(), self.dead_route()];
        names.extend(delays.iter().map(|d| self.delay(*d)));
        names
    }

    /// Declares the exchanges and work queues; idempotent.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_route().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_bind(
                self.dead_route().into(),
                self.dead().into(),
                "".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for key in [FETCH, WEBHOOK] {
            // Dead letters keep their routing key, which picks their queue.
            channel
                .queue_declare(
                    self.dead_queue(key).into(),
                    QueueDeclareOptions::durable(),
                    table(&[("x-queue-type", AMQPValue::LongString("quorum".into()))]),
                )
                .await?;
            channel
                .queue_bind(
                    self.dead_queue(key).into(),
                    self.dead_route().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_declare(
                    self.queue(key).into(),
                    QueueDeclareOptions::durable(),
                    table(&[
                        ("x-queue-type", AMQPValue::LongString("quorum".into())),
                        ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
                        (
                            "x-dead-letter-exchange",
                            AMQPValue::LongString(self.dead().into()),
                        ),
                    ]),
                )
                .await?;
            channel
                .queue_bind(
                    self.queue(key).into(),
                    self.exchange().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Declares the holding exchange and queue for one delay; idempotent.
    pub async fn declare_delay(&self, channel: &Channel, secs: u64) -> lapin::Result<()> {
        let name = self.delay(secs);
        channel
            .exchange_declare(
                name.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::durable(),
                table(&[(
                    "x-dead-letter-exchange",
                    AMQPValue::LongString(self.exchange().into()),
                )]),
            )
            .await?;
        channel
            .queue_bind(
                name.as_str().into(),
                name.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

/// Where the next connection starts trying nodes: each connection starts one node further,
/// so that after a node goes away the reconnect tries another first.
static NEXT_NODE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Longest one node may take to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection to the first node of `urls` that answers; a clear message when none
/// does.
pub async fn connect(urls: &str) -> anyhow::Result<Connection> {
    let nodes = crate::config::nodes(urls);
    anyhow::ensure!(!nodes.is_empty(), "amqp.url names no RabbitMQ node");
    let start = NEXT_NODE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut failures = Vec::new();
    for i in 0..nodes.len() {
        let url = nodes[(start + i) % nodes.len()];
        let attempt = Connection::connect(url, ConnectionProperties::default());
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(e)) => failures.push(format!(
                "{}: {e}",
                crate::redact::url(url, crate::redact::Show::WithoutCredentials)
            )),
            Err(_) => failures.push(format!(
                "{}: no answer within {} s",
                crate::redact::url(url, crate::redact::Show::WithoutCredentials),
                CONNECT_TIMEOUT.as_secs()
            )),
        }
    }
    bail!(
        "cannot connect to RabbitMQ at amqp.url ({}); is it running?",
        failures.join("; ")
    )
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// Hold the message this long before it reaches its queue.
    pub delay: Option<Duration>,
    /// The W3C trace context, sent as the `traceparent` header.
    pub traceparent: Option<String>,
}

struct Link {
    connection: Connection,
    channel: Channel,
    delays: HashSet<u64>,
}

/// Longest a dropped link's polite close may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

impl Link {
    /// Closes the connection politely if the broker still answers. Bounded: on a connection
    /// the broker already reset, lapin's close can wait for a close-ok that never comes, and
    /// the caller holds the publisher's lock meanwhile (a dispatcher once hung there for good
    /// after a RabbitMQ restart).
    async fn close(self) {
        let close = self.connection.close(200, "reconnecting".into());
        if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
            tracing::info!("the broker did not answer the close of a failed link; abandoning it");
        }
    }
}

/// Publishes persistent messages and waits for the broker's confirms; reconnects on the next
/// call after any failure.
pub struct Publisher {
    url: String,
    topology: Topology,
    link: Mutex<Option<Link>>,
    /// Where the link's health is reported.
    health: Option<AmqpLink>,
}

impl Publisher {
    /// A publisher that connects lazily.
    pub fn new(url: &str, topology: Topology) -> Self {
        Self {
            url: url.to_string(),
            topology,
            link: Mutex::new(None),
            health: None,
        }
    }

    /// Reports the link's health to `link`.
    pub fn with_health(mut self, link: AmqpLink) -> Self {
        self.health = Some(link);
        self
    }

    /// The topology it publishes into.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Connects (if needed) and declares the topology; used at start and by `/readyz`.
    pub async fn ensure_connected(&self) -> anyhow::Result<()> {
        let mut guard = self.link.lock().await;
        tokio::time::timeout(PUBLISH_TIMEOUT, self.link_mut(&mut guard))
            .await
            .map_err(|_| anyhow::anyhow!("RabbitMQ did not finish the connection handshake"))??;
        Ok(())
    }

    async fn link_mut<'a>(&self, guard: &'a mut Option<Link>) -> anyhow::Result<&'a mut Link> {
        if guard
            .as_ref()
            .is_some_and(|l| !l.connection.status().connected() || !l.channel.status().connected())
        {
            *guard = None;
        }
        if guard.is_none() {
            let connection = connect(&self.url).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            self.topology.declare(&channel).await?;
            if let Some(health) = &self.health {
                health.up();
            }
            *guard = Some(Link {
                connection,
                channel,
                delays: HashSet::new(),
            });
        }
        Ok(guard.as_mut().expect("link was just set"))
    }

    /// Publishes all messages and returns once the broker has confirmed every one.
    pub async fn publish(&self, messages: &[Outgoing]) -> anyhow::Result<()> {
        let mut guard = self.link.lock().await;
        // A broker that stops answering without closing the socket would otherwise hold the
        // relay (and every job behind it) forever.
        let result = tokio::time::timeout(PUBLISH_TIMEOUT, self.publish_on(&mut guard, messages))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "RabbitMQ did not confirm {} messages within {} s",
                    messages.len(),
                    PUBLISH_TIMEOUT.as_secs()
                ))
            });
        if result.is_err() {
            if let Some(health) = &self.health {
                health.down();
            }
            // Drop the link: the next call starts from a fresh connection.
            if let Some(link) = guard.take() {
                link.close().await;
            }
        }
        result
    }

    async fn publish_on(
        &self,
        guard: &mut Option<Link>,
        messages: &[Outgoing],
    ) -> anyhow::Result<()> {
        let link = self.link_mut(guard).await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            if let Some(traceparent) = &message.traceparent {
                properties = properties.with_headers(table(&[(
                    crate::trace::HEADER,
                    AMQPValue::LongString(traceparent.as_str().into()),
                )]));
            }
            let exchange = match message.delay {
                Some(delay) => {
                    let delay = delay.min(MAX_DELAY);
                    let bucket = delay_bucket(delay);
                    if !link.delays.contains(&bucket) {
                        self.topology.declare_delay(&link.channel, bucket).await?;
                        link.delays.insert(bucket);
                    }
                    let millis = delay.as_millis().max(1);
                    properties = properties.with_expiration(millis.to_string().into());
                    self.topology.delay(bucket)
                }
                None => self.topology.exchange(),
            };
            let confirm = link
                .channel
                .basic_publish(
                    exchange.into(),
                    message.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: false,
                        ..Default::default()
                    },
                    &message.payload,
                    properties,
                )
                .await?;
            confirms.push(confirm);
        }
        let outcomes = try_join_all(confirms).await?;
        if outcomes.iter().any(|c| !c.is_ack()) {
            bail!("RabbitMQ refused (nacked) a published message");
        }
        Ok(())
    }

    /// How many messages wait in the queue of `routing_key` and how many consumers read it.
    pub async fn depth(&self, routing_key: &str) -> anyhow::Result<QueueDepth> {
        let mut guard = self.link.lock().await;
        let result = tokio::time::timeout(PUBLISH_TIMEOUT, async {
            let link = self.link_mut(&mut guard).await?;
            let queue = link
                .channel
                .queue_declare(
                    self.topology.queue(routing_key).into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            anyhow::Ok(QueueDepth {
                ready: queue.message_count(),
                consumers: queue.consumer_count(),
            })
        })
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "RabbitMQ did not answer how long the queue is"
            ))
        });
        if result.is_err() {
            if let Some(link) = guard.take() {
                link.close().await;
            }
        }
        result
    }

    /// Whether the publisher's connection is up right now.
    pub async fn is_connected(&self) -> bool {
        self.link
            .lock()
            .await
            .as_ref()
            .is_some_and(|l| l.connection.status().connected())
    }
}

/// A queue's length as RabbitMQ reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages not yet delivered to a consumer.
    pub ready: u32,
    /// Consumers reading the queue (one per worker).
    pub consumers: u32,
}

/// Holding queues are shared by delays of similar length: the delay rounded down to two
/// significant digits of seconds, so jittered delays reuse a few queues and a message never
/// waits long behind one that expires later.
pub fn delay_bucket(delay: Duration) -> u64 {
    let secs = delay.as_secs().max(1);
    let mut scale = 1;
    while secs / scale >= 100 {
        scale *= 10;
    }
    secs / scale * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_buckets_keep_two_significant_digits() {
        assert_eq!(delay_bucket(Duration::from_millis(300)), 1);
        assert_eq!(delay_bucket(Duration::from_secs(7)), 7);
        assert_eq!(delay_bucket(Duration::from_secs(99)), 99);
        assert_eq!(delay_bucket(Duration::from_secs(123)), 120);
        assert_eq!(delay_bucket(Duration::from_secs(86_399)), 86_000);
    }
}
