//! Messages exchanged over RabbitMQ: one type per queue, its wire versions, and the mapping
//! between store rows and messages (the store knows rows, this module knows the wire).
//!
//! Every message body carries its version as `"v": N`; the two shapes published before
//! versioning carry none and are told apart by their fields. A binary reads its own version
//! and the one before it ([`FetchVideo::VERSIONS`], [`DeliverWebhook::VERSIONS`]), so that
//! during a rolling upgrade old and new binaries can share one queue. A message of any other
//! version is not guessed at: decoding answers [`Unreadable::Version`], the consumer
//! dead-letters it with that reason, and the binary's dead-letter consumer settles it (a
//! newer message waits for a newer binary; a retired one is turned into current work: its
//! video handed out again, its webhook attempt queued again). `tests/fixtures/messages/<queue>/v<N>.json` holds every version ever
//! published; a test decodes each, so a change that breaks an old message fails CI.
//!
//! Fetch messages:
//! - v1 (retired): `{job_id, idx, attempt}`; the worker loaded the video from PostgreSQL.
//! - v2: v1 and `video`, the video itself as the dispatcher read it.
//! - v3: v2 and `"v": 3`.
//! - v4: v3 and `video.checksum` (`{"sha256"?, "md5"?}`), published only for a video that
//!   has one: a v3 reader would import it unchecked, so it must not read it; videos without
//!   a checksum go on as v3, which the previous release reads.
//! - v5: `{"v": 5, "videos": [{"fetch": <a v4 body without "v">, "traceparent"?}]}`: several
//!   videos in one message ([`FetchVideos`]), each with its own trace, because the broker's
//!   work is per message (publish, confirm, deliver, ack: each a quorum-queue log entry).
//!   Only first tries go out this way, and only when `fetch.videos_per_message` is above 1;
//!   retries and split messages go out one video each (v3/v4).
//!
//! Webhook messages:
//! - v1 (retired): `{job_id, attempt}`.
//! - v2: v1 and `url`, the receiver's URL. No round: it belongs to the delivery's current one.
//! - v3: v2 and `"v": 3` and `round`, the delivery's round (see `store::webhooks`). `attempt`
//!   keeps v2's meaning (attempts made over all rounds, plus one), so the previous release,
//!   which ignores `v` and `round`, handles a v3 message as it did a v2 one.

use std::fmt;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::queue::{self, Outgoing};
use crate::store::outbox::{NewMessage, Pending};
use crate::store::webhooks::{Held, RoundStarted};
use crate::store::{Checksum, Item, ItemState, Validators};
use crate::trace::TraceParent;

/// The versions of one queue's messages a binary reads: its own and the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub oldest: u32,
    pub newest: u32,
}

impl fmt::Display for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.oldest, self.newest)
    }
}

/// Why a message body could not be read. Retrying will not change it: the consumer
/// dead-letters the message with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// A version this binary does not read: older than it supports (retired), or newer (a
    /// newer release published it during a rolling upgrade).
    #[error("message version {found} not supported by this binary (it reads {reads})")]
    Version { found: u32, reads: Versions },
    /// Not a message of this queue at all.
    #[error("not a readable {queue} message: {error}")]
    Malformed { queue: &'static str, error: String },
}

impl Unreadable {
    /// Whether a newer binary may read it: leave it for one instead of failing its work.
    pub fn is_newer(&self) -> bool {
        matches!(self, Unreadable::Version { found, reads } if found > &reads.newest)
    }
}

/// What a binary's dead-letter consumer does with a message of its queue, given whether it
/// reads it and why the broker dead-lettered it: one rule for the worker and the notifier.
#[derive(Debug, Clone, PartialEq)]
pub enum DeadLetter<T> {
    /// A binary that could not read it (an older one) rejected it; this one reads it: back
    /// to the queue after this pause, so it does not bounce between old binaries.
    BackToQueue(Duration),
    /// A newer release published it: offered again after this pause, until a binary that
    /// reads it takes it (the rest of a rolling upgrade).
    WaitForNewer(Duration, Unreadable),
    /// A retired version (or not a message of this queue at all): its work is turned into
    /// current work from its [`Ids`], if it names any.
    Retired(Unreadable),
    /// Readable, and set aside after its delivery limit: its work fails with that reason.
    Exhausted(T),
}

impl<T> DeadLetter<T> {
    /// Pause before a message an older binary rejected goes back to the queue.
    pub const BACK_TO_QUEUE: Duration = Duration::from_secs(1);
    /// Pause before a newer release's message is offered again.
    pub const WAIT_FOR_NEWER: Duration = Duration::from_secs(15);

    /// The rule: `decoded` is the body as this binary reads it, `rejected` whether a
    /// consumer rejected it (rather than the broker's delivery limit setting it aside).
    pub fn of(decoded: Result<T, Unreadable>, rejected: bool) -> Self {
        match decoded {
            Ok(_) if rejected => DeadLetter::BackToQueue(Self::BACK_TO_QUEUE),
            Ok(message) => DeadLetter::Exhausted(message),
            Err(unreadable) if unreadable.is_newer() => {
                DeadLetter::WaitForNewer(Self::WAIT_FOR_NEWER, unreadable)
            }
            Err(unreadable) => DeadLetter::Retired(unreadable),
        }
    }
}

/// What decoding looks at first: the version, and the fields that tell the unversioned
/// shapes apart.
#[derive(Deserialize)]
struct Probe {
    v: Option<u32>,
    video: Option<IgnoredAny>,
    url: Option<IgnoredAny>,
}

/// The ids every version of either message carries: enough to settle one that cannot be
/// read (to hand its video out again, or to queue its webhook attempt again).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ids {
    pub job_id: String,
    /// The video's position (fetch messages only).
    pub idx: Option<i32>,
    /// The attempt's number (webhook messages) or the try's (fetch messages).
    pub attempt: Option<u32>,
}

impl Ids {
    /// The ids of a message body, whatever its version; `None` when it has none.
    pub fn of(body: &[u8]) -> Option<Ids> {
        serde_json::from_slice(body).ok()
    }
}

/// The version of `body`, given the version its unversioned shape with (`with_field`) or
/// without the distinguishing field has.
fn version(body: &[u8], queue: &'static str, field: fn(&Probe) -> bool) -> Result<u32, Unreadable> {
    let probe: Probe = serde_json::from_slice(body).map_err(|e| Unreadable::Malformed {
        queue,
        error: e.to_string(),
    })?;
    Ok(probe.v.unwrap_or(if field(&probe) { 2 } else { 1 }))
}

fn decode_as<T: serde::de::DeserializeOwned>(
    body: &[u8],
    queue: &'static str,
) -> Result<T, Unreadable> {
    serde_json::from_slice(body).map_err(|e| Unreadable::Malformed {
        queue,
        error: e.to_string(),
    })
}

/// A body with its version first.
#[derive(Serialize)]
struct Versioned<'a, T> {
    v: u32,
    #[serde(flatten)]
    body: &'a T,
}

fn encode<T: Serialize>(v: u32, body: &T) -> Vec<u8> {
    serde_json::to_vec(&Versioned { v, body }).expect("messages serialize")
}

/// Download, store and upsert one video of a job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FetchVideo {
    pub job_id: String,
    /// Position of the video in the job's batch.
    pub idx: i32,
    /// How many earlier tries went back through the queue (0 on the first).
    #[serde(default)]
    pub attempt: u32,
    /// The video itself, so that the worker need not load it.
    pub video: Video,
}

/// What a worker needs to import one video, as the dispatcher read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Video {
    pub project_id: i64,
    pub system_name: String,
    pub external_id: String,
    pub url: String,
    pub file_name: String,
    pub metadata: serde_json::Value,
    /// The existing entry's source validators, when it came from this same URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// Fixity values to check the stored file against (v4).
    #[serde(default, skip_serializing_if = "Checksum::is_empty")]
    pub checksum: Checksum,
}

impl FetchVideo {
    /// The version this binary publishes for a video without a checksum.
    pub const VERSION: u32 = 3;
    /// The version it publishes for a video with one.
    pub const CHECKSUM_VERSION: u32 = 4;
    /// The versions this binary reads.
    pub const VERSIONS: Versions = Versions {
        oldest: 2,
        newest: FetchVideos::VERSION,
    };

    /// Reads a fetch message of one video (v2–v4); a v5 message is read with
    /// [`FetchVideos::decode`].
    pub fn decode(body: &[u8]) -> Result<Self, Unreadable> {
        match version(body, "fetch", |p| p.video.is_some())? {
            2..=4 => decode_as(body, "fetch"),
            found => Err(Unreadable::Version {
                found,
                reads: Self::VERSIONS,
            }),
        }
    }

    /// The first try of a pending video the dispatcher read.
    pub fn first_try(item: &Item) -> Self {
        let known = item.known.clone().unwrap_or_default();
        FetchVideo {
            job_id: item.job_id.clone(),
            idx: item.idx,
            attempt: 0,
            video: Video {
                project_id: item.project_id,
                system_name: item.system_name.clone(),
                external_id: item.external_id.clone(),
                url: item.url.clone(),
                file_name: item.file_name.clone(),
                metadata: item.metadata.clone(),
                etag: known.etag,
                last_modified: known.last_modified,
                checksum: item.checksum.clone(),
            },
        }
    }

    /// The next try of the same video.
    pub fn next_try(&self) -> Self {
        FetchVideo {
            attempt: self.attempt + 1,
            ..self.clone()
        }
    }

    /// The video the message carries, as the store records it (pending, as far as the
    /// message knows; the worker checks).
    pub fn item(&self) -> Item {
        let video = self.video.clone();
        let known = Validators {
            etag: video.etag,
            last_modified: video.last_modified,
        };
        Item {
            job_id: self.job_id.clone(),
            idx: self.idx,
            project_id: video.project_id,
            system_name: video.system_name,
            external_id: video.external_id,
            url: video.url,
            file_name: video.file_name,
            metadata: video.metadata,
            state: ItemState::Pending,
            known: (!known.is_empty()).then_some(known),
            checksum: video.checksum,
        }
    }

    /// The version this message goes out as: v4 only when its video has a checksum.
    pub fn version(&self) -> u32 {
        if self.video.checksum.is_empty() {
            Self::VERSION
        } else {
            Self::CHECKSUM_VERSION
        }
    }

    /// The message to publish, `delay` from now, in the trace `traceparent`.
    pub fn outgoing(&self, delay: Option<Duration>, traceparent: Option<String>) -> Outgoing {
        Outgoing {
            routing_key: queue::FETCH.into(),
            payload: encode(self.version(), self),
            delay,
            traceparent,
        }
    }
}

/// Several videos to download, store and upsert, in one message (v5), possibly of several
/// jobs: the dispatcher packs a round's videos this way so that the broker's per-message
/// work is paid once per message rather than once per video. The worker handles each video
/// as it would a message of its own, and acknowledges the message when all are recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FetchVideos {
    pub videos: Vec<Dispatched>,
}

/// One video of a fetch message, with the trace it continues.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Dispatched {
    /// The video, as a message of its own would carry it.
    pub fetch: FetchVideo,
    /// Its job's W3C `traceparent` (a message of one video carries it as a header instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Dispatched {
    /// The trace the video continues, parsed.
    pub fn trace(&self) -> Option<TraceParent> {
        self.traceparent.as_deref().and_then(TraceParent::parse)
    }

    /// The video as a message of its own (v3/v4), to publish after `delay`.
    pub fn alone(&self, delay: Option<Duration>) -> Outgoing {
        self.fetch.outgoing(delay, self.traceparent.clone())
    }
}

impl FetchVideos {
    /// The version of a message of several videos.
    pub const VERSION: u32 = 5;

    /// Reads a fetch message of any version this binary supports: the videos it carries,
    /// one before v5. A video of a single message continues `header`, the message's trace.
    pub fn decode(
        body: &[u8],
        header: Option<&TraceParent>,
    ) -> Result<Vec<Dispatched>, Unreadable> {
        match version(body, "fetch", |p| p.video.is_some())? {
            Self::VERSION => {
                let message: FetchVideos = decode_as(body, "fetch")?;
                if message.videos.is_empty() {
                    return Err(Unreadable::Malformed {
                        queue: "fetch",
                        error: "a version 5 message without videos".into(),
                    });
                }
                Ok(message.videos)
            }
            _ => Ok(vec![Dispatched {
                fetch: FetchVideo::decode(body)?,
                traceparent: header.map(TraceParent::header),
            }]),
        }
    }

    /// The videos as messages to publish: `per_message` videos each, as v5, or each alone
    /// (v3/v4, which the previous release reads) when `per_message` is 1.
    pub fn pack(videos: Vec<Dispatched>, per_message: usize) -> Vec<Outgoing> {
        if per_message <= 1 {
            return videos.iter().map(|video| video.alone(None)).collect();
        }
        videos
            .chunks(per_message)
            .map(|chunk| match chunk {
                [one] => one.alone(None),
                several => FetchVideos {
                    videos: several.to_vec(),
                }
                .outgoing(),
            })
            .collect()
    }

    /// The message to publish now.
    pub fn outgoing(&self) -> Outgoing {
        Outgoing {
            routing_key: queue::FETCH.into(),
            payload: encode(Self::VERSION, self),
            delay: None,
            traceparent: None,
        }
    }
}

/// Which round of its delivery a webhook message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Round `n` (v3 messages).
    Of(u32),
    /// The delivery's current round (v2 messages, published before rounds were counted).
    Current,
}

/// Deliver (attempt `attempt` of) a finished job's webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverWebhook {
    pub job_id: String,
    pub round: Round,
    /// Number of this attempt over all rounds, from 1.
    pub attempt: u32,
    /// The receiver's URL (a job's webhook never changes), so the notifier can check the
    /// host's free slots before it reads the database.
    pub url: String,
}

/// The wire shape of webhook messages v2 (no `round`) and v3.
#[derive(Serialize, Deserialize)]
struct WebhookWire {
    job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    round: Option<u32>,
    attempt: u32,
    url: String,
}

impl DeliverWebhook {
    /// The version this binary publishes.
    pub const VERSION: u32 = 3;
    /// The versions this binary reads.
    pub const VERSIONS: Versions = Versions {
        oldest: 2,
        newest: Self::VERSION,
    };

    /// Reads a webhook message of any version this binary supports.
    pub fn decode(body: &[u8]) -> Result<Self, Unreadable> {
        let found = version(body, "webhook", |p| p.url.is_some())?;
        if !(Self::VERSIONS.oldest..=Self::VERSIONS.newest).contains(&found) {
            return Err(Unreadable::Version {
                found,
                reads: Self::VERSIONS,
            });
        }
        let wire: WebhookWire = decode_as(body, "webhook")?;
        let round = match (found, wire.round) {
            (2, _) => Round::Current,
            (_, Some(n)) => Round::Of(n),
            (_, None) => {
                return Err(Unreadable::Malformed {
                    queue: "webhook",
                    error: "a version 3 message without its round".into(),
                })
            }
        };
        Ok(DeliverWebhook {
            job_id: wire.job_id,
            round,
            attempt: wire.attempt,
            url: wire.url,
        })
    }

    /// The first attempt of a round that just started.
    pub fn first_of(round: &RoundStarted) -> Self {
        DeliverWebhook {
            job_id: round.job_id.clone(),
            round: Round::Of(round.round),
            attempt: round.attempt,
            url: round.url.clone(),
        }
    }

    /// Attempt `attempt` of a delivery's current round `round` (a retired message's attempt,
    /// queued again).
    pub fn current(job_id: &str, round: u32, attempt: u32, url: &str) -> Self {
        DeliverWebhook {
            job_id: job_id.to_string(),
            round: Round::Of(round),
            attempt,
            url: url.to_string(),
        }
    }

    /// A held delivery's attempt, released.
    pub fn released(held: &Held) -> Self {
        DeliverWebhook {
            job_id: held.job_id.clone(),
            round: Round::Of(held.round),
            attempt: held.attempt,
            url: held.url.clone(),
        }
    }

    /// The attempt after this one, in `round` (the delivery's round as the attempt found it).
    pub fn next(&self, round: u32) -> Self {
        DeliverWebhook {
            job_id: self.job_id.clone(),
            round: Round::Of(round),
            attempt: self.attempt + 1,
            url: self.url.clone(),
        }
    }

    fn payload(&self) -> Vec<u8> {
        let wire = WebhookWire {
            job_id: self.job_id.clone(),
            round: match self.round {
                Round::Of(n) => Some(n),
                Round::Current => None,
            },
            attempt: self.attempt,
            url: self.url.clone(),
        };
        encode(Self::VERSION, &wire)
    }

    /// The message to publish, `delay` from now, in the trace `traceparent`.
    pub fn outgoing(&self, delay: Option<Duration>, traceparent: Option<String>) -> Outgoing {
        Outgoing {
            routing_key: queue::WEBHOOK.into(),
            payload: self.payload(),
            delay,
            traceparent,
        }
    }

    /// The outbox row that queues the first attempt of a round that just started, to be
    /// written in the transaction that started it.
    pub fn announce(round: &RoundStarted) -> NewMessage {
        let message = Self::first_of(round);
        NewMessage {
            routing_key: queue::WEBHOOK.into(),
            payload: serde_json::from_slice(&message.payload()).expect("messages serialize"),
            traceparent: parent_of(round),
        }
    }
}

/// The `traceparent` a round's first attempt is published with: the span that started the
/// round when it is in the job's trace, otherwise a new child of the job's trace.
fn parent_of(round: &RoundStarted) -> Option<String> {
    let trace_id = round.trace_id.as_deref()?;
    round
        .traceparent
        .as_deref()
        .and_then(TraceParent::parse)
        .filter(|parent| parent.trace_id == trace_id)
        .map(|parent| parent.header())
        .or_else(|| crate::trace::header_for(trace_id))
}

/// An outbox row as it is published: its body as written (whatever version it was written
/// at; consumers read the one before theirs).
pub fn from_outbox(row: Pending) -> Outgoing {
    Outgoing {
        routing_key: row.routing_key,
        payload: serde_json::to_vec(&row.payload).expect("JSON serializes"),
        delay: None,
        traceparent: row.traceparent,
    }
}

/// A delivered message published again unchanged, `delay` from now (a dead letter going back
/// to its queue for a binary that reads it), as a child of the current span (`trace::passed_on`).
pub fn again(
    routing_key: &str,
    body: &[u8],
    delay: Option<Duration>,
    trace: Option<&TraceParent>,
) -> Outgoing {
    Outgoing {
        routing_key: routing_key.to_string(),
        payload: body.to_vec(),
        delay,
        traceparent: crate::trace::passed_on(trace),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video() -> serde_json::Value {
        serde_json::json!({"project_id": 1, "system_name": "s", "external_id": "e",
            "url": "http://a.example/v.mp4", "file_name": "v.mp4", "metadata": {}})
    }

    fn dispatched(idx: i32, trace: Option<&str>) -> Dispatched {
        let body =
            serde_json::json!({"job_id": format!("j{}", idx % 2), "idx": idx, "video": video()});
        Dispatched {
            fetch: FetchVideo::decode(body.to_string().as_bytes()).unwrap(),
            traceparent: trace.map(str::to_owned),
        }
    }

    #[test]
    fn several_videos_go_in_one_message_each_with_its_trace() {
        let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let videos: Vec<Dispatched> = (0..5)
            .map(|i| dispatched(i, (i % 2 == 0).then_some(trace)))
            .collect();
        let packed = FetchVideos::pack(videos.clone(), 2);
        assert_eq!(packed.len(), 3, "2 + 2 + 1");
        let mut read = Vec::new();
        for (n, out) in packed.iter().enumerate() {
            let body: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
            // The last message holds one video: it goes out alone, as the previous release
            // reads it, with its trace as a header.
            assert_eq!(body["v"], if n < 2 { 5 } else { 3 }, "{body}");
            let header = out.traceparent.as_deref().and_then(TraceParent::parse);
            read.extend(FetchVideos::decode(&out.payload, header.as_ref()).unwrap());
        }
        assert_eq!(read, videos, "every video, in order, with its own trace");
        assert_eq!(read[0].trace().unwrap().header(), trace);
        assert_eq!(read[1].trace(), None);

        // One per message: every video alone, as v3/v4.
        let alone = FetchVideos::pack(videos.clone(), 1);
        assert_eq!(alone.len(), 5);
        assert!(alone
            .iter()
            .all(|out| FetchVideo::decode(&out.payload).is_ok()));

        let empty = FetchVideos::decode(br#"{"v":5,"videos":[]}"#, None).unwrap_err();
        assert!(matches!(empty, Unreadable::Malformed { .. }), "{empty}");
        let newer = FetchVideos::decode(br#"{"v":6,"videos":[]}"#, None).unwrap_err();
        assert!(newer.is_newer());
        // A v5 message names no single video: settling it needs no ids.
        assert_eq!(Ids::of(&packed[0].payload), None);
    }

    #[test]
    fn fetch_messages_round_trip_and_old_versions_are_named() {
        let item = FetchVideo::decode(
            serde_json::json!({"job_id": "j", "idx": 3, "attempt": 1, "video": video()})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
        .item();
        let message = FetchVideo::first_try(&item);
        let out = message.outgoing(None, None);
        assert_eq!(out.routing_key, "fetch");
        let body: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(body["v"], 3);
        assert_eq!(FetchVideo::decode(&out.payload).unwrap(), message);
        let v1 = FetchVideo::decode(br#"{"job_id":"j","idx":0,"attempt":0}"#).unwrap_err();
        assert_eq!(
            v1.to_string(),
            "message version 1 not supported by this binary (it reads 2..5)"
        );
        assert!(!v1.is_newer());
        let v9 = FetchVideo::decode(br#"{"v":9,"job_id":"j","idx":0}"#).unwrap_err();
        assert!(v9.is_newer());
        assert!(matches!(
            FetchVideo::decode(b"not json").unwrap_err(),
            Unreadable::Malformed { .. }
        ));
        assert_eq!(
            Ids::of(br#"{"v":9,"job_id":"j","idx":4}"#),
            Some(Ids {
                job_id: "j".into(),
                idx: Some(4),
                attempt: None,
            })
        );
    }

    #[test]
    fn dead_letters_go_back_wait_for_a_newer_binary_or_are_settled() {
        let newer = Unreadable::Version {
            found: 6,
            reads: FetchVideo::VERSIONS,
        };
        let retired = Unreadable::Version {
            found: 1,
            reads: FetchVideo::VERSIONS,
        };
        assert_eq!(
            DeadLetter::of(Ok(7), true),
            DeadLetter::BackToQueue(Duration::from_secs(1))
        );
        assert_eq!(DeadLetter::of(Ok(7), false), DeadLetter::Exhausted(7));
        for rejected in [true, false] {
            assert_eq!(
                DeadLetter::<u8>::of(Err(newer.clone()), rejected),
                DeadLetter::WaitForNewer(Duration::from_secs(15), newer.clone())
            );
            assert_eq!(
                DeadLetter::<u8>::of(Err(retired.clone()), rejected),
                DeadLetter::Retired(retired.clone())
            );
        }
    }

    #[test]
    fn webhook_messages_carry_their_round_and_v2_means_the_current_one() {
        let v2 =
            DeliverWebhook::decode(br#"{"job_id":"j","attempt":2,"url":"http://r/"}"#).unwrap();
        assert_eq!(v2.round, Round::Current);
        let next = v2.next(4);
        let out = next.outgoing(None, None);
        let body: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(body["v"], 3);
        assert_eq!(body["round"], 4);
        assert_eq!(body["attempt"], 3);
        assert_eq!(DeliverWebhook::decode(&out.payload).unwrap(), next);
        assert!(DeliverWebhook::decode(br#"{"job_id":"j","attempt":1}"#)
            .unwrap_err()
            .to_string()
            .starts_with("message version 1 not supported"));
    }

    #[test]
    fn a_round_is_announced_in_the_span_that_started_it_when_that_is_in_the_job_s_trace() {
        let job = TraceParent::root();
        let video = job.child();
        let mut round = RoundStarted {
            job_id: "j".into(),
            round: 1,
            attempt: 1,
            url: "http://r/".into(),
            trace_id: Some(job.trace_id.clone()),
            traceparent: Some(video.header()),
        };
        assert_eq!(
            DeliverWebhook::announce(&round).traceparent,
            Some(video.header())
        );
        // A span of another trace (a message that carried none) is not the job's: a new
        // child of the job's trace instead.
        round.traceparent = Some(TraceParent::root().header());
        let announced = DeliverWebhook::announce(&round).traceparent.unwrap();
        let announced = TraceParent::parse(&announced).unwrap();
        assert_eq!(announced.trace_id, job.trace_id);
        round.traceparent = None;
        let announced = DeliverWebhook::announce(&round).traceparent.unwrap();
        assert_eq!(
            TraceParent::parse(&announced).unwrap().trace_id,
            job.trace_id
        );
        round.trace_id = None;
        assert_eq!(DeliverWebhook::announce(&round).traceparent, None);
    }
}
