//! Settling the fetch messages the broker dead-lettered: one a binary rejected because it
//! could not read it goes back to the queue for one that can (or, a newer version, waits for
//! a newer binary, its video's status saying why); one of a retired version has its video
//! handed out again by the dispatcher, which reads it from PostgreSQL; one that exceeded its
//! delivery limit (the worker crashed or was killed each time) fails its video with that
//! reason, so the job still finishes. One of several videos (v5) that exceeded it is split
//! into messages of one video each: only the video that keeps killing workers fails.

use std::time::Duration;

use tracing::Instrument;
use video_import_shared::consume::{Delivered, Disposition};
use video_import_shared::messages::{self, DeadLetter, Dispatched, FetchVideos, Ids, Unreadable};
use video_import_shared::retry::until_ok;
use video_import_shared::store::outcomes::{Outcome, Recorded};
use video_import_shared::store::{dispatch, items, Item, ItemState};
use video_import_shared::trace;

use crate::error::FailureClass;
use crate::group_commit;
use crate::import::Importer;
use crate::retry_policy;

impl Importer {
    /// Handles one dead-lettered fetch message.
    pub async fn settle(&self, delivered: Delivered) -> Disposition {
        let span = tracing::info_span!("dead_video", trace_id = delivered.trace_id());
        trace::adopt(&span, delivered.traceparent.as_ref());
        self.settle_in_span(delivered).instrument(span).await
    }

    async fn settle_in_span(&self, delivered: Delivered) -> Disposition {
        let decoded = FetchVideos::decode(&delivered.data, delivered.traceparent.as_ref());
        match DeadLetter::of(decoded, delivered.was_rejected()) {
            DeadLetter::BackToQueue(pause) => {
                tracing::info!(
                    "a binary that cannot read this message rejected it; queueing it again"
                );
                self.again(&delivered, pause).await
            }
            DeadLetter::WaitForNewer(pause, unreadable) => {
                tracing::warn!(%unreadable, "waiting for a binary that reads this message");
                self.note_waiting(&delivered, &unreadable).await;
                self.again(&delivered, pause).await
            }
            DeadLetter::Retired(unreadable) => self.redispatch(&delivered, unreadable).await,
            DeadLetter::Exhausted(videos) if videos.len() > 1 => self.split(&videos).await,
            DeadLetter::Exhausted(videos) => {
                let reason = retry_policy::dead_letter_reason();
                self.fail(videos[0].fetch.item(), reason, FailureClass::DeadLettered)
                    .await
            }
        }
    }

    /// Publishes each video of a message that exceeded its delivery limit as a message of its
    /// own (the done ones are skipped when they arrive), so that each gets its own limit.
    async fn split(&self, videos: &[Dispatched]) -> Disposition {
        tracing::warn!(
            videos = videos.len(),
            "a message of several videos exceeded its delivery limit; queueing each alone"
        );
        let alone: Vec<_> = videos.iter().map(|video| video.alone(None)).collect();
        match self.publisher.publish(&alone).await {
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
        match self.publisher.publish(&[outgoing]).await {
            Ok(()) => Disposition::Ack,
            Err(_) => Disposition::Requeue,
        }
    }

    /// Says in the video's status why it waits (best effort: the message goes on waiting
    /// whether or not this is written).
    async fn note_waiting(&self, delivered: &Delivered, unreadable: &Unreadable) {
        let Some(Ids {
            job_id,
            idx: Some(idx),
            ..
        }) = Ids::of(&delivered.data)
        else {
            return;
        };
        let reason = format!("waiting for a binary that reads it: {unreadable}");
        if let Ok(client) = self.pool.get().await {
            let _ = items::note_waiting(&client, &job_id, idx, &reason).await;
        }
    }

    /// Hands the video of a retired message out again (the dispatcher reads it from
    /// PostgreSQL and publishes a current message), or fails it with the reason when the
    /// message names no video.
    async fn redispatch(&self, delivered: &Delivered, unreadable: Unreadable) -> Disposition {
        let Some(Ids {
            job_id,
            idx: Some(idx),
            ..
        }) = Ids::of(&delivered.data)
        else {
            // Nothing names the video: there is nothing to hand out or fail. Logged and
            // counted, so that it is not dropped silently.
            tracing::error!(%unreadable, bytes = delivered.data.len(), "dropping a dead-lettered message that names no video");
            self.metrics.dead_letters.inc();
            return Disposition::Ack;
        };
        let trace = trace::passed_on(delivered.traceparent.as_ref());
        let again = until_ok(&self.shutdown, || async {
            let client = self.pool.get().await?;
            dispatch::again(&client, &job_id, idx, trace.as_deref()).await
        })
        .await;
        match again {
            Some(handed) => {
                tracing::info!(job = %job_id, idx, %unreadable, handed, "a retired message's video is handed out again");
                Disposition::Ack
            }
            None => Disposition::Requeue,
        }
    }

    /// Records the video as failed with `reason`, if it is still pending.
    async fn fail(&self, item: Item, reason: String, class: FailureClass) -> Disposition {
        let batch = [(item, Outcome::Failed(reason))];
        let traces = [trace::passed_on(None)];
        let recorded = until_ok(&self.shutdown, || {
            group_commit::record(&self.pool, &batch, &traces)
        })
        .await;
        let Some(recorded) = recorded else {
            return Disposition::Requeue;
        };
        if let Some(Recorded::Done { job_finished, .. }) = recorded.first() {
            tracing::error!(reason = %batch[0].1.reason(), "video dead-lettered; marked failed");
            self.metrics.dead_letters.inc();
            self.metrics.finished(ItemState::Failed, class);
            if let Some(seconds) = job_finished {
                self.metrics.job_seconds.observe(*seconds);
                self.relay.wake();
            }
        }
        // The outcome is in PostgreSQL, where the status endpoint shows it.
        Disposition::Ack
    }
}
