//! Settling the webhook messages the broker dead-lettered: one a binary rejected because it
//! could not read it goes back to the queue for one that can (or, a newer version, waits for
//! a newer binary); one of a retired version is queued again as a current message of the
//! delivery's current round; one that exceeded its delivery limit fails its delivery with
//! that reason, which the job's status shows.

use std::time::Duration;

use tracing::Instrument;
use video_import_shared::consume::{Delivered, Disposition};
use video_import_shared::messages::{self, DeadLetter, DeliverWebhook, Ids, Round};
use video_import_shared::retry::until_ok;
use video_import_shared::store::webhooks;
use video_import_shared::trace;

use crate::deliver::Notifier;
use crate::schedule;

impl Notifier {
    /// Handles one dead-lettered webhook message.
    pub async fn settle(&self, delivered: Delivered) -> Disposition {
        let span = tracing::info_span!("dead_webhook", trace_id = delivered.trace_id());
        trace::adopt(&span, delivered.traceparent.as_ref());
        self.settle_in_span(delivered).instrument(span).await
    }

    async fn settle_in_span(&self, delivered: Delivered) -> Disposition {
        let decoded = DeliverWebhook::decode(&delivered.data);
        let hook = match DeadLetter::of(decoded, delivered.was_rejected()) {
            DeadLetter::BackToQueue(pause) => {
                tracing::info!(
                    "a binary that cannot read this message rejected it; queueing it again"
                );
                return self.again(&delivered, pause).await;
            }
            DeadLetter::WaitForNewer(pause, unreadable) => {
                tracing::warn!(%unreadable, "waiting for a binary that reads this message");
                return self.again(&delivered, pause).await;
            }
            DeadLetter::Retired(unreadable) => match Ids::of(&delivered.data) {
                Some(ids) => return self.requeue_current(ids, &delivered).await,
                None => {
                    tracing::error!(%unreadable, bytes = delivered.data.len(), "dropping a dead-lettered message that names no job");
                    self.metrics.dead_letters.inc();
                    return Disposition::Ack;
                }
            },
            DeadLetter::Exhausted(hook) => hook,
        };
        let (job_id, reason) = (hook.job_id, schedule::dead_letter_reason());
        let round = match hook.round {
            Round::Of(n) => Some(n),
            Round::Current => None,
        };
        tracing::error!(job = %job_id, %reason, "webhook message dead-lettered; delivery failed");
        self.metrics.dead_letters.inc();
        let done = until_ok(&self.shutdown, || async {
            let client = self.pool.get().await?;
            webhooks::fail_pending(&client, &job_id, round, &reason).await
        })
        .await;
        match done {
            Some(()) => Disposition::Ack,
            None => Disposition::Requeue,
        }
    }

    /// Queues the attempt a retired message asked for as a current message of the
    /// delivery's current round (its URL read from PostgreSQL), if the delivery is pending.
    async fn requeue_current(&self, ids: Ids, delivered: &Delivered) -> Disposition {
        let round = until_ok(&self.shutdown, || async {
            let client = self.pool.get().await?;
            webhooks::pending_round(&client, &ids.job_id).await
        })
        .await;
        let Some(round) = round else {
            return Disposition::Requeue;
        };
        let Some((round, url)) = round else {
            // Delivered or given up already: the retired message has nothing left to do.
            return Disposition::Ack;
        };
        let message = DeliverWebhook::current(&ids.job_id, round, ids.attempt.unwrap_or(1), &url);
        tracing::info!(job = %message.job_id, round, attempt = message.attempt, "a retired webhook message is queued again as a current one");
        let trace = trace::passed_on(delivered.traceparent.as_ref());
        match self.retries.submit(message.outgoing(None, trace)).await {
            Ok(()) => Disposition::Ack,
            Err(_) => Disposition::Requeue,
        }
    }

    /// Publishes the message again, unchanged, after `delay`.
    async fn again(&self, delivered: &Delivered, delay: Duration) -> Disposition {
        let outgoing = messages::again(
            &delivered.routing_key,
            &delivered.data,
            Some(delay),
            delivered.traceparent.as_ref(),
        );
        match self.retries.submit(outgoing).await {
            Ok(()) => Disposition::Ack,
            Err(_) => Disposition::Requeue,
        }
    }
}
