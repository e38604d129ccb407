//! The notifier's wiring, and the handling of one `DeliverWebhook` message: take a slot of
//! the receiver's host (or hold the delivery in PostgreSQL while it has none, see `hold`),
//! load the delivery, make the attempt, schedule the next one through a delay queue when the
//! schedule says so, and record it. Also settles the webhook messages the broker
//! dead-lettered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use video_import_shared::batch::Batcher;
use video_import_shared::config::Settings;
use video_import_shared::consume::{self, Delivered, Disposition};
use video_import_shared::messages::DeliverWebhook;
use video_import_shared::metrics::{dead_letters, register, ssrf_refusals};
use video_import_shared::netguard::{self, AddressPolicy, ClientOptions};
use video_import_shared::queue::{self, Outgoing};
use video_import_shared::retry::until_ok;
use video_import_shared::service::Service;
use video_import_shared::store::webhooks::{self, AttemptRecord, Due, Hold};
use video_import_shared::store::WebhookState;
use video_import_shared::trace::TraceParent;

use crate::deliver::{self, Attempt};
use crate::hold::Releaser;
use crate::hosts::{self, HostSlots};
use crate::schedule::{self, Schedule};

/// Messages handled at once per POST slot: most of them wait for their host's slot (or are
/// held), so a burst of deliveries to a dead receiver cannot keep the others from arriving.
const HANDLERS_PER_POST: usize = 4;

/// Statements of each kind (attempts, holds, retry publishes) under way at once.
const WRITERS: usize = 2;
/// Most requests written by one of them.
const MAX_GROUP: usize = 128;

/// Most failed videos listed in one payload.
const MAX_FAILURES: i64 = 100;

/// Everything a delivery handler needs; shared by all handlers through an `Arc`.
struct Notifier {
    /// Deliveries in flight per receiver host (a lock held only for a map lookup).
    hosts: Arc<HostSlots>,
    /// Records attempts a group per statement.
    attempts: Batcher<AttemptRecord, ()>,
    /// Holds deliveries a group per statement.
    holds: Batcher<Hold, bool>,
    /// POSTs in flight (`webhook.concurrency`); taken after the host's slot, so handlers
    /// that wait for a busy host's slot do not keep others from posting.
    posts: Arc<Semaphore>,
    pool: Pool,
    /// SSRF-guarded HTTP client that never follows redirects.
    client: reqwest::Client,
    /// Which receiver addresses may be reached (IP literals are checked before each POST).
    policy: AddressPolicy,
    /// Publishes retries into the delay queues, a group per confirm round.
    retries: Batcher<Outgoing, ()>,
    schedule: Schedule,
    /// Longest one POST may take.
    timeout: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
}

#[derive(Clone)]
struct Metrics {
    deliveries: IntCounterVec,
    seconds: Histogram,
    in_flight: IntGauge,
    /// Deliveries held because their host had no free slot.
    holds: IntCounter,
    /// Held deliveries published again.
    released: IntCounter,
    dead_letters: IntCounter,
    ssrf_refusals: IntCounter,
}

impl Metrics {
    fn new(registry: &Registry) -> anyhow::Result<Self> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "webhook_attempts_total",
                "Webhook attempts by result: delivered, retry, failed",
            ),
            &["result"],
        )?;
        let seconds = Histogram::with_opts(
            HistogramOpts::new(
                "webhook_attempt_duration_seconds",
                "Time of one webhook POST",
            )
            .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0]),
        )?;
        for result in ["delivered", "retry", "failed"] {
            deliveries.with_label_values(&[result]);
        }
        let in_flight = IntGauge::new("webhook_deliveries_in_flight", "Webhook POSTs running now")?;
        register(registry, &deliveries);
        register(registry, &seconds);
        let holds = IntCounter::new(
            "webhook_holds_total",
            "Deliveries held in PostgreSQL because their receiver's host had no free slot",
        )?;
        let released = IntCounter::new(
            "webhook_releases_total",
            "Held deliveries published again once their host had a free slot",
        )?;
        register(registry, &in_flight);
        register(registry, &holds);
        register(registry, &released);
        Ok(Self {
            deliveries,
            seconds,
            in_flight,
            holds,
            released,
            dead_letters: dead_letters(registry, "webhook"),
            ssrf_refusals: ssrf_refusals(registry, "notifier"),
        })
    }
}

/// Runs the notifier until SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let service = Service::start(&settings, "notifier").await?;
    let webhook = &settings.webhook;
    let policy = AddressPolicy::new(webhook.allow_private_networks, &webhook.allowed_networks);
    let client = netguard::client(
        policy.clone(),
        &ClientOptions {
            connect_timeout: webhook.timeout.min(Duration::from_secs(10)),
            read_timeout: webhook.timeout,
            // A receiver's redirect is an answer, not an instruction: never followed.
            max_redirects: 0,
            user_agent: concat!("video-import-notifier/", env!("CARGO_PKG_VERSION")).into(),
        },
    )?;
    let ops_task = service.serve_ops(settings.metrics.listen).await?;
    let hosts = Arc::new(HostSlots::new(webhook.per_host_concurrency));
    let metrics = Metrics::new(&service.registry)?;
    let releaser = Releaser {
        pool: service.pool.clone(),
        publisher: service.publisher.clone(),
        hosts: hosts.clone(),
        released: metrics.released.clone(),
    };
    let release_task = tokio::spawn(releaser.run(service.shutdown.clone()));
    let pool = service.pool.clone();
    let attempts = Batcher::start(WRITERS, MAX_GROUP, move |records: Vec<AttemptRecord>| {
        let pool = pool.clone();
        async move {
            let client = pool.get().await?;
            webhooks::record_attempts(&client, &records).await?;
            Ok(vec![(); records.len()])
        }
    });
    let pool = service.pool.clone();
    let holds = Batcher::start(WRITERS, MAX_GROUP, move |holds: Vec<Hold>| {
        let pool = pool.clone();
        async move {
            let client = pool.get().await?;
            webhooks::hold(&client, &holds).await
        }
    });
    let publisher = service.publisher.clone();
    let retries = Batcher::start(WRITERS, MAX_GROUP, move |messages: Vec<Outgoing>| {
        let publisher = publisher.clone();
        async move {
            publisher.publish(&messages).await?;
            Ok(vec![(); messages.len()])
        }
    });
    let notifier = Arc::new(Notifier {
        hosts,
        attempts,
        holds,
        posts: Arc::new(Semaphore::new(webhook.concurrency)),
        pool: service.pool.clone(),
        client,
        policy,
        retries,
        schedule: Schedule::new(&webhook.retry_schedule),
        timeout: webhook.timeout,
        metrics,
        shutdown: service.shutdown.clone(),
    });
    let handler = consume::handler(notifier.clone(), |notifier, message| async move {
        notifier.handle(message).await
    });
    let dead_handler = consume::handler(notifier, |notifier, message| async move {
        notifier.handle_dead(message).await
    });
    service
        .consume(
            queue::WEBHOOK,
            webhook.concurrency * HANDLERS_PER_POST,
            webhook.timeout + Duration::from_secs(5),
            handler,
            dead_handler,
        )
        .await;
    service.shutdown.cancel();
    let _ = release_task.await;
    ops_task.await??;
    Ok(())
}

impl Notifier {
    async fn handle(&self, delivered: Delivered) -> Disposition {
        let Some(message) = delivered.decode::<DeliverWebhook>() else {
            return Disposition::Ack;
        };
        let span = tracing::info_span!("webhook", job = %message.job_id, attempt = message.attempt, trace_id = delivered.trace_id());
        self.deliver(message, delivered.traceparent.as_ref())
            .instrument(span)
            .await
    }

    async fn deliver(&self, message: DeliverWebhook, trace: Option<&TraceParent>) -> Disposition {
        // A receiver that is slow or down may hold only a few slots; its other deliveries are
        // held in PostgreSQL instead of blocking deliveries to everyone else. With the URL in
        // the message, that is decided before touching the database.
        let early = match &message.url {
            Some(url) => match self.hosts.acquire(url).await {
                Some(permit) => Some(permit),
                None => return self.hold(&message, url).await,
            },
            None => None,
        };
        let ready = until_ok(&self.shutdown, || self.prepare(&message)).await;
        let (due, body) = match ready {
            Some(Some(ready)) => ready,
            Some(None) => return Disposition::Ack, // delivered, given up, or this attempt was made
            None => return Disposition::Requeue,
        };
        let host_slot = match early {
            Some(permit) => permit,
            None => match self.hosts.acquire(&due.url).await {
                Some(permit) => permit,
                None => return self.hold(&message, &due.url).await,
            },
        };
        let Ok(post_slot) = self.posts.acquire().await else {
            return Disposition::Requeue;
        };
        let started = Instant::now();
        self.metrics.in_flight.inc();
        let attempt = deliver::post(&self.client, &self.policy, &due, body, self.timeout).await;
        self.metrics.in_flight.dec();
        // The slots bound connections to the receiver: free them before the bookkeeping.
        drop((host_slot, post_slot));
        let elapsed = started.elapsed();
        if matches!(attempt, Attempt::Refused(_)) {
            self.metrics.ssrf_refusals.inc();
        }
        self.metrics.seconds.observe(elapsed.as_secs_f64());

        let made = Schedule::made_this_round(message.attempt, due.round_start);
        let next_delay = match &attempt {
            Attempt::Failed { retry_after, .. } => {
                self.schedule
                    .next_delay(made, *retry_after, schedule::jitter_factor())
            }
            _ => None,
        };
        if let Some(delay) = next_delay {
            // Schedule first: if we crash before recording, the redelivered message repeats
            // this attempt instead of losing the retry.
            let next = DeliverWebhook {
                job_id: message.job_id.clone(),
                attempt: message.attempt + 1,
                url: Some(due.url.clone()),
            };
            if self.publish_after(&next, delay, trace).await == Disposition::Requeue {
                return Disposition::Requeue;
            }
        }
        match &attempt {
            Attempt::Delivered(status) => tracing::info!(status, "webhook delivered"),
            Attempt::Failed { error, .. } => {
                tracing::info!(%error, retry_in = ?next_delay, "webhook attempt failed")
            }
            Attempt::Gone => tracing::info!("webhook receiver answered 410 Gone; not retrying"),
            Attempt::Refused(reason) => tracing::warn!(%reason, "webhook refused; not retrying"),
        }
        let record = outcome(&message, &attempt, next_delay.is_some(), made, elapsed);
        // The result label is the delivery's state after the attempt, "retry" while pending.
        let result = match record.state {
            WebhookState::Pending => "retry",
            state => state.as_str(),
        };
        self.metrics.deliveries.with_label_values(&[result]).inc();
        match until_ok(&self.shutdown, || self.attempts.submit(record.clone())).await {
            Some(()) => Disposition::Ack,
            None => Disposition::Requeue,
        }
    }

    /// Holds the delivery in PostgreSQL because its host has no free slot; the releaser
    /// publishes it again once the host has one.
    async fn hold(&self, message: &DeliverWebhook, url: &str) -> Disposition {
        let host = hosts::host_key(url);
        let hold = Hold {
            job_id: message.job_id.clone(),
            attempt: message.attempt,
            host: host.clone(),
        };
        let held = until_ok(&self.shutdown, || self.holds.submit(hold.clone())).await;
        match held {
            Some(true) => {
                self.metrics.holds.inc();
                tracing::debug!(%host, "receiver's host busy; delivery held");
                Disposition::Ack
            }
            Some(false) => Disposition::Ack, // delivered, given up, or this attempt was made
            None => Disposition::Requeue,
        }
    }

    /// Publishes `next` to be handled after `delay`.
    async fn publish_after(
        &self,
        next: &DeliverWebhook,
        delay: Duration,
        trace: Option<&TraceParent>,
    ) -> Disposition {
        let outgoing = Outgoing {
            routing_key: queue::WEBHOOK.into(),
            payload: serde_json::to_vec(next).expect("messages serialize"),
            delay: Some(delay),
            traceparent: trace.map(|t| t.child().header()),
        };
        match self.retries.submit(outgoing).await {
            Ok(()) => Disposition::Ack,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot schedule the webhook; handing the message back");
                Disposition::Requeue
            }
        }
    }

    /// Loads the delivery and builds its body; `None` if there is nothing to send.
    async fn prepare(&self, message: &DeliverWebhook) -> anyhow::Result<Option<(Due, Vec<u8>)>> {
        let client = self.pool.get().await?;
        let Some(due) = webhooks::due(&client, &message.job_id, message.attempt).await? else {
            return Ok(None);
        };
        let failures = if due.job.failed == 0 {
            Vec::new()
        } else {
            webhooks::failures(&client, &message.job_id, MAX_FAILURES).await?
        };
        let body = deliver::body(&message.job_id, &due, failures)?;
        Ok(Some((due, body)))
    }

    /// Handles a webhook message the broker set aside after too many deliveries without an
    /// ack: the delivery fails with that reason, which the status shows.
    async fn handle_dead(&self, message: Delivered) -> Disposition {
        let Some(hook) = message.decode::<DeliverWebhook>() else {
            return Disposition::Ack;
        };
        let span = tracing::info_span!("dead_webhook", job = %hook.job_id, attempt = hook.attempt, trace_id = message.trace_id());
        let reason = schedule::dead_letter_reason();
        self.metrics.dead_letters.inc();
        let done = until_ok(&self.shutdown, || async {
            let client = self.pool.get().await?;
            webhooks::fail_pending(&client, &hook.job_id, &reason).await
        })
        .instrument(span)
        .await;
        match done {
            Some(()) => Disposition::Ack,
            None => Disposition::Requeue,
        }
    }
}

/// The record of an attempt: its HTTP status, error and the delivery's state after it.
fn outcome(
    message: &DeliverWebhook,
    attempt: &Attempt,
    will_retry: bool,
    made_this_round: usize,
    elapsed: Duration,
) -> AttemptRecord {
    let (http_status, error, state) = match attempt {
        Attempt::Delivered(s) => (Some(*s), None, WebhookState::Delivered),
        Attempt::Gone => (
            Some(410),
            Some("the receiver answered 410 Gone; not retrying".to_string()),
            WebhookState::Failed,
        ),
        Attempt::Refused(reason) => (None, Some(reason.clone()), WebhookState::Failed),
        Attempt::Failed { error, status, .. } if will_retry => {
            (*status, Some(error.clone()), WebhookState::Pending)
        }
        Attempt::Failed { error, status, .. } => (
            *status,
            Some(format!("{error}; gave up after {made_this_round} attempts")),
            WebhookState::Failed,
        ),
    };
    AttemptRecord {
        job_id: message.job_id.clone(),
        number: message.attempt,
        state,
        http_status,
        error,
        duration_ms: elapsed.as_millis().min(i32::MAX as u128) as i32,
    }
}
