//! What happens to one webhook message: take a slot of the receiver's host (or hold the
//! delivery in PostgreSQL while it has none, see `hold`), load the delivery, make the attempt,
//! schedule the next one through a delay queue when the schedule says so, and record it. A
//! message this binary cannot read is rejected, for `settle` to deal with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use video_import_shared::batch::Batcher;
use video_import_shared::consume::{Delivered, Disposition};
use video_import_shared::messages::{DeliverWebhook, Round};
use video_import_shared::netguard::AddressPolicy;
use video_import_shared::queue::Outgoing;
use video_import_shared::retry::until_ok;
use video_import_shared::store::webhooks::{self, AttemptRecord, Due, Hold};
use video_import_shared::store::WebhookState;
use video_import_shared::trace::{self, TraceParent};

use crate::hosts::{self, HostSlots};
use crate::metrics::Metrics;
use crate::post::{self, Attempt};
use crate::schedule::{self, Schedule};

/// Most failed videos listed in one payload.
const MAX_FAILURES: i64 = 100;

/// Everything a delivery handler needs; shared by all handlers through an `Arc`.
pub struct Notifier {
    /// Deliveries in flight per receiver host.
    pub hosts: Arc<HostSlots>,
    /// Records attempts a group per statement.
    pub attempts: Batcher<AttemptRecord, ()>,
    /// Holds deliveries a group per statement.
    pub holds: Batcher<Hold, bool>,
    /// POSTs in flight (`webhook.concurrency`); taken after the host's slot, so handlers
    /// that wait for a busy host's slot do not keep others from posting.
    pub posts: Arc<Semaphore>,
    pub pool: Pool,
    /// SSRF-guarded HTTP client that never follows redirects.
    pub client: reqwest::Client,
    /// Which receiver addresses may be reached (IP literals are checked before each POST).
    pub policy: AddressPolicy,
    /// Publishes retries into the delay queues, a group per confirm round.
    pub retries: Batcher<Outgoing, ()>,
    pub schedule: Schedule,
    /// Longest one POST may take.
    pub timeout: Duration,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

impl Notifier {
    /// Handles one webhook message.
    pub async fn handle(&self, delivered: Delivered) -> Disposition {
        let message = match DeliverWebhook::decode(&delivered.data) {
            Ok(message) => message,
            Err(unreadable) => return Disposition::Reject(unreadable.to_string()),
        };
        let span = tracing::info_span!("webhook", job = %message.job_id, attempt = message.attempt, trace_id = delivered.trace_id());
        // Exported as a child of the span that sent the message: the video that finished
        // the job for a first attempt, the previous attempt for a retry.
        trace::adopt(&span, delivered.traceparent.as_ref());
        self.deliver(message, delivered.traceparent.as_ref())
            .instrument(span)
            .await
    }

    async fn deliver(&self, message: DeliverWebhook, trace: Option<&TraceParent>) -> Disposition {
        // A receiver that is slow or down may hold only a few slots; its other deliveries are
        // held in PostgreSQL instead of blocking deliveries to everyone else. With the URL in
        // the message, that is decided before touching the database.
        let Some(host_slot) = self.hosts.acquire(&message.url).await else {
            return self.hold(&message).await;
        };
        let ready = until_ok(&self.shutdown, || self.prepare(&message)).await;
        let (due, body) = match ready {
            Some(Some(ready)) => ready,
            Some(None) => return Disposition::Ack, // delivered, given up, or this attempt was made
            None => return Disposition::Requeue,
        };
        let Ok(post_slot) = self.posts.acquire().await else {
            return Disposition::Requeue;
        };
        let started = Instant::now();
        self.metrics.in_flight.inc();
        let attempt = post::post(&self.client, &self.policy, &due, body, self.timeout).await;
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
            // A superseded round's attempt is made once: its delivery's current round retries.
            Attempt::Failed { .. } if due.superseded => None,
            Attempt::Failed { retry_after, .. } => {
                self.schedule
                    .next_delay(made, *retry_after, schedule::jitter_factor())
            }
            _ => None,
        };
        if let Some(delay) = next_delay {
            // Schedule first: if we crash before recording, the redelivered message repeats
            // this attempt instead of losing the retry.
            let next = message.next(due.round);
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
        let record = outcome(
            &message,
            &due,
            &attempt,
            next_delay.is_some(),
            made,
            elapsed,
        );
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
    async fn hold(&self, message: &DeliverWebhook) -> Disposition {
        let host = hosts::host_key(&message.url);
        let hold = Hold {
            job_id: message.job_id.clone(),
            round: match message.round {
                Round::Of(n) => Some(n),
                Round::Current => None,
            },
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
        let outgoing = next.outgoing(Some(delay), trace::passed_on(trace));
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
        let round = match message.round {
            Round::Of(n) => Some(n),
            Round::Current => None,
        };
        let Some(due) = webhooks::due(&client, &message.job_id, round, message.attempt).await?
        else {
            return Ok(None);
        };
        let failures = if due.job.failed == 0 {
            Vec::new()
        } else {
            webhooks::failures(&client, &message.job_id, MAX_FAILURES).await?
        };
        let body = post::body(&message.job_id, &due, failures)?;
        Ok(Some((due, body)))
    }
}

/// The record of an attempt: its HTTP status, error and the delivery's state after it.
fn outcome(
    message: &DeliverWebhook,
    due: &Due,
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
        round: due.round,
        number: message.attempt,
        state,
        http_status,
        error,
        duration_ms: elapsed.as_millis().min(i32::MAX as u128) as i32,
    }
}
