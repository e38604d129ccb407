//! The storage verifier: re-reads stored objects and compares each with its entry's size and
//! SHA-256 (and MD5, where the entry has one), streaming and hashing as it reads, so memory
//! stays bounded whatever an object's size, and never faster than its rate (a token
//! bucket). A damaged entry is marked (`entries::mark_damaged`), so that its next import
//! downloads again instead of skipping; one found whole again loses its mark.
//!
//! `video-import-api storage verify` runs it once ([`run`]); a worker with
//! `storage.verify_rate_mib` runs it continuously ([`continuously`]): one worker at a time
//! (a PostgreSQL advisory lock, as the sweeper), going through the entries in id order and
//! remembering where it got to, so a restart continues the round.

use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::{GenericClient, Pool};
use futures::StreamExt;
use md5::Md5;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::metrics::register;
use crate::storage::Storage;
use crate::store::locks::{Held, VERIFY_LOCK};
use crate::store::verify::{self as library, Stored};
use crate::store::{entries, DamageKind};

/// Entries read from the database at a time.
const PAGE: i64 = 200;
/// Bad entries a report lists; beyond these it counts them (`notListed`): they are marked
/// all the same.
const MOST_LISTED: usize = 10_000;
/// Unreadable objects in a row after which a run stops: the storage itself is out, and
/// reading on would only list every object.
const UNREADABLE_IN_A_ROW: u32 = 5;
/// How long a worker that does not hold the verifier's lock waits before asking again.
const LOCK_RETRY: Duration = Duration::from_secs(30);
/// Between two rounds of the continuous verifier (a small library is not read in a loop).
const ROUND_PAUSE: Duration = Duration::from_secs(10);
/// The continuous verifier reads an unreadable object this many times, a pause apart,
/// before it counts it and moves on.
const UNREADABLE_TRIES: u32 = 3;
const UNREADABLE_PAUSE: Duration = Duration::from_secs(30);

/// A read rate, in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(f64);

impl Rate {
    /// `mib` MiB/s; `None` for 0 (no verification, or no bound).
    pub fn mib_per_sec(mib: f64) -> Option<Rate> {
        (mib.is_finite() && mib > 0.0).then_some(Rate(mib * 1024.0 * 1024.0))
    }

    /// Bytes per second.
    pub fn bytes_per_sec(self) -> f64 {
        self.0
    }
}

/// A token bucket of bytes: reading `n` bytes takes `n` tokens, which refill at the rate up
/// to one second's worth; a read that leaves the bucket in debt waits until it is paid. So
/// over any stretch of `t` seconds at most `rate × (t + 1 s)` bytes, plus the chunk in
/// hand, are read. Pure: the caller says what time it is.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    /// An empty bucket (no burst at the start) filling at `rate`.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate: rate.0,
            burst: rate.0,
            tokens: 0.0,
            at: None,
        }
    }

    /// Takes `bytes` just read at `now`; returns how long to wait before reading on.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        if let Some(at) = self.at {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.at = Some(now);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Paces reads with a [`TokenBucket`], or not at all.
struct Throttle(Option<TokenBucket>);

impl Throttle {
    fn new(rate: Option<Rate>) -> Self {
        Self(rate.map(TokenBucket::new))
    }

    /// Waits as long as reading `bytes` more requires; `false` when `shutdown` came first.
    async fn pace(&mut self, bytes: u64, shutdown: &CancellationToken) -> bool {
        let Some(bucket) = &mut self.0 else {
            return true;
        };
        let wait = bucket.take(bytes, Instant::now());
        if wait.is_zero() {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

/// What is wrong with a stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "camelCase")]
pub enum Problem {
    /// There is no object at the entry's key.
    #[serde(rename_all = "camelCase")]
    Missing {
        /// The entry's size in bytes.
        expected_size: u64,
    },
    /// The object's size is not the entry's.
    WrongSize {
        /// The entry's size in bytes.
        expected: u64,
        /// The object's.
        found: u64,
    },
    /// The object's `algorithm` hash is not the entry's.
    WrongHash {
        /// `sha256` or `md5`.
        algorithm: &'static str,
        /// The entry's hash (hex).
        expected: String,
        /// The object's.
        found: String,
    },
    /// The storage did not let the object be read (not marked: the object may be fine).
    Unreadable {
        /// What the storage said.
        error: String,
    },
}

impl Problem {
    /// The kind an entry is marked with; `None` for an unreadable object.
    pub fn kind(&self) -> Option<DamageKind> {
        match self {
            Problem::Missing { .. } => Some(DamageKind::Missing),
            Problem::WrongSize { .. } => Some(DamageKind::WrongSize),
            Problem::WrongHash { .. } => Some(DamageKind::WrongHash),
            Problem::Unreadable { .. } => None,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing { expected_size } => write!(
                f,
                "missing: no stored object at the entry's key (expected {expected_size} bytes)"
            ),
            Problem::WrongSize { expected, found } => {
                write!(f, "wrong size: expected {expected} bytes, found {found}")
            }
            Problem::WrongHash {
                algorithm,
                expected,
                found,
            } => write!(f, "wrong {algorithm}: expected {expected}, found {found}"),
            Problem::Unreadable { error } => write!(f, "unreadable: {error}"),
        }
    }
}

/// What reading one object found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Its size and hashes are the entry's.
    Whole,
    Bad(Problem),
    /// Shutdown came first.
    Stopped,
}

/// Reads the object of `stored` through `throttle` and compares it with the entry. Adds the
/// bytes read to `bytes`.
async fn check(
    storage: &Storage,
    stored: &Stored,
    throttle: &mut Throttle,
    bytes: &mut u64,
    shutdown: &CancellationToken,
) -> Verdict {
    let expected = stored.size as u64;
    let (size, mut stream) = match storage.read_whole(&stored.key).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => {
            return Verdict::Bad(Problem::Missing {
                expected_size: expected,
            })
        }
        Err(e) => {
            return Verdict::Bad(Problem::Unreadable {
                error: e.to_string(),
            })
        }
    };
    if size != expected {
        // Nothing to hash: the size says it all.
        return Verdict::Bad(Problem::WrongSize {
            expected,
            found: size,
        });
    }
    let mut sha256 = Sha256::new();
    let mut md5 = stored.md5.as_ref().map(|_| Md5::new());
    let mut read = 0u64;
    loop {
        let chunk = tokio::select! {
            _ = shutdown.cancelled() => return Verdict::Stopped,
            chunk = stream.next() => chunk,
        };
        let chunk = match chunk {
            None => break,
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                return Verdict::Bad(Problem::Unreadable {
                    error: format!("reading failed after {read} bytes: {e}"),
                })
            }
        };
        sha256.update(&chunk);
        if let Some(md5) = &mut md5 {
            md5.update(&chunk);
        }
        read += chunk.len() as u64;
        *bytes += chunk.len() as u64;
        if !throttle.pace(chunk.len() as u64, shutdown).await {
            return Verdict::Stopped;
        }
    }
    if read != expected {
        // It changed between the look at its size and the read.
        return Verdict::Bad(Problem::WrongSize {
            expected,
            found: read,
        });
    }
    let found = hex::encode(sha256.finalize());
    if found != stored.sha256 {
        return Verdict::Bad(Problem::WrongHash {
            algorithm: "sha256",
            expected: stored.sha256.clone(),
            found,
        });
    }
    if let (Some(expected), Some(md5)) = (&stored.md5, md5) {
        let found = hex::encode(md5.finalize());
        if &found != expected {
            return Verdict::Bad(Problem::WrongHash {
                algorithm: "md5",
                expected: expected.clone(),
                found,
            });
        }
    }
    Verdict::Whole
}

/// What a verdict did to the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Settled {
    /// Whole; `cleared` when it was marked damaged before.
    Whole { cleared: bool },
    /// Bad, and marked (unless unreadable).
    Bad(Problem),
    /// Re-imported while it was read: its new object is checked another time.
    Changed,
}

/// Marks or clears the entry as the verdict says.
async fn settle(
    client: &impl GenericClient,
    stored: &Stored,
    verdict: Verdict,
) -> anyhow::Result<Settled> {
    match verdict {
        Verdict::Whole if stored.damaged => Ok(Settled::Whole {
            cleared: entries::clear_damage(client, &stored.id, &stored.key).await?,
        }),
        // (Stopped is not settled: the callers stop first.)
        Verdict::Whole | Verdict::Stopped => Ok(Settled::Whole { cleared: false }),
        Verdict::Bad(problem) => match problem.kind() {
            None => Ok(Settled::Bad(problem)),
            Some(kind) => {
                let description = problem.to_string();
                if entries::mark_damaged(client, &stored.id, &stored.key, kind, &description)
                    .await?
                {
                    Ok(Settled::Bad(problem))
                } else {
                    Ok(Settled::Changed)
                }
            }
        },
    }
}

/// What `storage verify` checks.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only this project's entries.
    pub project: Option<i64>,
    /// Only this many entries, chosen at random.
    pub sample: Option<u64>,
    /// Read no faster than this.
    pub rate: Option<Rate>,
}

/// A bad entry in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bad {
    /// The entry's id.
    pub entry_id: String,
    /// Its project's handle.
    pub project: String,
    /// The system it was imported from (`systemName`).
    pub system_name: String,
    /// Its id in that system.
    pub external_id: String,
    /// Where its object is in storage.
    pub key: String,
    /// What is wrong (its fields are the bad entry's in JSON).
    #[serde(flatten)]
    pub problem: Problem,
    /// The problem in words, as the entry's mark says it.
    pub reason: String,
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Entries whose objects were read.
    pub checked: u64,
    /// Of those, whole.
    pub ok: u64,
    /// Of those, without an object (marked damaged).
    pub missing: u64,
    /// Of those, of another size than the entry's (marked damaged).
    pub wrong_size: u64,
    /// Of those, with another hash than the entry's (marked damaged).
    pub wrong_hash: u64,
    /// The storage did not let them be read (not marked: the object may be fine).
    pub unreadable: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Entries marked damaged before whose objects are whole now: their marks were cleared.
    pub cleared: u64,
    /// Entries re-imported while they were read (their new object is not checked).
    pub changed: u64,
    /// The bad entries (at most 10,000; the rest are counted in `notListed`).
    pub bad: Vec<Bad>,
    /// Bad entries beyond the 10,000 listed in `bad`.
    pub not_listed: u64,
}

impl Report {
    /// Missing, wrong-size, wrong-hash and unreadable objects.
    pub fn bad_count(&self) -> u64 {
        self.missing + self.wrong_size + self.wrong_hash + self.unreadable
    }

    fn add(&mut self, stored: &Stored, settled: Settled) {
        self.checked += 1;
        let problem = match settled {
            Settled::Whole { cleared } => {
                self.ok += 1;
                self.cleared += u64::from(cleared);
                return;
            }
            Settled::Changed => {
                self.changed += 1;
                return;
            }
            Settled::Bad(problem) => problem,
        };
        *match problem {
            Problem::Missing { .. } => &mut self.missing,
            Problem::WrongSize { .. } => &mut self.wrong_size,
            Problem::WrongHash { .. } => &mut self.wrong_hash,
            Problem::Unreadable { .. } => &mut self.unreadable,
        } += 1;
        if self.bad.len() >= MOST_LISTED {
            self.not_listed += 1;
            return;
        }
        self.bad.push(Bad {
            entry_id: stored.id.clone(),
            project: stored.project.clone(),
            system_name: stored.system_name.clone(),
            external_id: stored.external_id.clone(),
            key: stored.key.clone(),
            reason: problem.to_string(),
            problem,
        });
    }
}

/// Verifies every entry (of a project, or a random sample) once: `storage verify`.
pub async fn run(storage: &Storage, pool: &Pool, options: &Options) -> anyhow::Result<Report> {
    let client = pool.get().await.context("connecting to verify")?;
    let mut once = Once {
        storage,
        client: &client,
        throttle: Throttle::new(options.rate),
        report: Report::default(),
        unreadable_in_a_row: 0,
    };
    if let Some(n) = options.sample {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        once.check(&library::sample(&client, options.project, n).await?)
            .await?;
    } else {
        let mut after: Option<String> = None;
        loop {
            let page = library::page(&client, after.as_deref(), options.project, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            once.check(&page).await?;
        }
    }
    Ok(once.report)
}

/// A run of `storage verify` under way.
struct Once<'a> {
    storage: &'a Storage,
    client: &'a deadpool_postgres::Client,
    throttle: Throttle,
    report: Report,
    unreadable_in_a_row: u32,
}

impl Once<'_> {
    /// Checks `entries`, marks or clears them, and adds them to the report; stops when the
    /// storage lets nothing be read.
    async fn check(&mut self, entries: &[Stored]) -> anyhow::Result<()> {
        // Nothing stops a run but its end (or Ctrl-C, which ends the process).
        let never = CancellationToken::new();
        for stored in entries {
            let verdict = check(
                self.storage,
                stored,
                &mut self.throttle,
                &mut self.report.bytes,
                &never,
            )
            .await;
            if let Verdict::Bad(Problem::Unreadable { error }) = &verdict {
                self.unreadable_in_a_row += 1;
                if self.unreadable_in_a_row >= UNREADABLE_IN_A_ROW {
                    anyhow::bail!(
                        "{UNREADABLE_IN_A_ROW} stored objects in a row could not be read \
                         (the last, {:?}: {error}); check that the storage is reachable and \
                         run again",
                        stored.key
                    );
                }
            } else {
                self.unreadable_in_a_row = 0;
            }
            let settled = settle(self.client, stored, verdict).await?;
            self.report.add(stored, settled);
        }
        Ok(())
    }
}

/// The continuous verifier's counters (prefixed `video_import_` by the registry).
#[derive(Clone)]
pub struct VerifyMetrics {
    objects: IntCounter,
    bytes: IntCounter,
    damaged: IntCounterVec,
    unreadable: IntCounter,
    rounds: IntCounter,
}

impl VerifyMetrics {
    /// Registers the counters in `registry`, every kind at 0.
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let objects = IntCounter::new(
            "storage_verified_objects_total",
            "Stored objects the continuous verifier read again",
        )?;
        let bytes = IntCounter::new(
            "storage_verified_bytes_total",
            "Bytes the continuous verifier read",
        )?;
        let damaged = IntCounterVec::new(
            Opts::new(
                "storage_damaged_found_total",
                "Damaged stored objects the continuous verifier found and marked, by kind (an entry marked already is not counted again)",
            ),
            &["kind"],
        )?;
        for kind in DamageKind::ALL {
            damaged.with_label_values(&[kind.as_str()]);
        }
        let unreadable = IntCounter::new(
            "storage_verify_unreadable_total",
            "Stored objects the continuous verifier could not read (after three tries)",
        )?;
        let rounds = IntCounter::new(
            "storage_verify_rounds_total",
            "Rounds of the continuous verifier through every entry",
        )?;
        for counter in [&objects, &bytes, &unreadable, &rounds] {
            register(registry, counter);
        }
        register(registry, &damaged);
        Ok(Self {
            objects,
            bytes,
            damaged,
            unreadable,
            rounds,
        })
    }
}

/// Verifies stored objects at `rate`, round after round, until `shutdown`, while this
/// process holds the verifier's lock (others wait for it).
pub async fn continuously(
    storage: Storage,
    pool: Pool,
    rate: Rate,
    metrics: VerifyMetrics,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    while !shutdown.is_cancelled() {
        let stint = async {
            let Some(held) = Held::try_take(&pool, VERIFY_LOCK).await? else {
                return Ok(());
            };
            tracing::info!("verifying stored objects (this worker holds the verifier's lock)");
            let result = rounds(&storage, &held, rate, &metrics, &shutdown).await;
            held.release().await;
            result
        };
        match stint.await {
            Ok(()) => failing = false,
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(error = %format!("{error:#}"), "the storage verifier stopped; trying again in 30 s");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(LOCK_RETRY) => {}
        }
    }
}

/// Rounds through the entries, from where the last verifier got to, until `shutdown` or an
/// error (the lock's connection lost among them).
async fn rounds(
    storage: &Storage,
    held: &Held,
    rate: Rate,
    metrics: &VerifyMetrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let client = held.client();
    let mut throttle = Throttle::new(Some(rate));
    loop {
        let after = library::position(client).await?;
        let page = library::page(client, after.as_deref(), None, PAGE).await?;
        if page.is_empty() {
            library::finish_round(client).await?;
            metrics.rounds.inc();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(ROUND_PAUSE) => continue,
            }
        }
        for stored in &page {
            let mut tries = 0;
            let verdict = loop {
                tries += 1;
                let mut bytes = 0;
                let verdict = check(storage, stored, &mut throttle, &mut bytes, shutdown).await;
                metrics.bytes.inc_by(bytes);
                match verdict {
                    Verdict::Stopped => return Ok(()),
                    Verdict::Bad(Problem::Unreadable { error }) if tries < UNREADABLE_TRIES => {
                        tracing::warn!(key = %stored.key, %error, "a stored object could not be read; trying again in 30 s");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(UNREADABLE_PAUSE) => {}
                        }
                    }
                    verdict => break verdict,
                }
            };
            metrics.objects.inc();
            match settle(client, stored, verdict).await? {
                // Marked before: found again, not anew.
                Settled::Bad(problem) if stored.damaged && problem.kind().is_some() => {}
                Settled::Bad(problem) => {
                    match problem.kind() {
                        Some(kind) => metrics.damaged.with_label_values(&[kind.as_str()]).inc(),
                        None => metrics.unreadable.inc(),
                    }
                    tracing::warn!(
                        entry = %stored.id, project = %stored.project, system_name = %stored.system_name,
                        external_id = %stored.external_id, key = %stored.key, problem = %problem,
                        "a stored object is damaged; its entry is marked and its next import downloads it again"
                    );
                }
                Settled::Whole { cleared: true } => {
                    tracing::info!(entry = %stored.id, key = %stored.key, "a stored object marked damaged is whole again; the mark is cleared");
                }
                Settled::Whole { cleared: false } | Settled::Changed => {}
            }
            library::advance(client, &stored.id).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    /// Reads `chunks` as fast as the bucket lets them, from `start`; returns when each chunk
    /// was read (before its wait) and the time after the last wait.
    fn simulate(rate: Rate, chunks: &[u64], start: Instant) -> (Vec<(Instant, u64)>, Instant) {
        let mut bucket = TokenBucket::new(rate);
        let mut now = start;
        let mut reads = Vec::new();
        for &n in chunks {
            reads.push((now, n));
            now += bucket.take(n, now);
        }
        (reads, now)
    }

    #[test]
    fn reading_as_fast_as_allowed_keeps_to_the_rate_over_any_stretch() {
        let rate = Rate::mib_per_sec(2.0).unwrap();
        let chunk = 256 * 1024;
        let chunks = vec![chunk; 400]; // 100 MiB
        let start = Instant::now();
        let (reads, end) = simulate(rate, &chunks, start);
        // The whole read takes what the rate says (50 s for 100 MiB at 2 MiB/s).
        let total: u64 = chunks.iter().sum();
        let seconds = (end - start).as_secs_f64();
        assert!(
            (seconds - total as f64 / (2.0 * MIB)).abs() < 0.01,
            "{seconds} s"
        );
        // Over every stretch between two reads, no more than rate × (stretch + 1 s) plus
        // the chunk in hand.
        for (i, (from, _)) in reads.iter().enumerate() {
            let mut bytes = 0;
            for (at, n) in &reads[i..] {
                bytes += n;
                let stretch = (*at - *from).as_secs_f64();
                assert!(
                    bytes as f64 <= rate.bytes_per_sec() * (stretch + 1.0) + chunk as f64,
                    "{bytes} bytes in {stretch} s"
                );
            }
        }
    }

    #[test]
    fn a_pause_saves_at_most_one_seconds_worth() {
        let rate = Rate::mib_per_sec(1.0).unwrap();
        let mut bucket = TokenBucket::new(rate);
        let start = Instant::now();
        // The first read waits: the bucket starts empty.
        assert_eq!(bucket.take(1024 * 1024, start), Duration::from_secs(1));
        // A minute idle later, one second's worth goes at once, and the next MiB waits.
        let later = start + Duration::from_secs(61);
        assert_eq!(bucket.take(1024 * 1024, later), Duration::ZERO);
        let wait = bucket.take(1024 * 1024, later);
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn small_and_uneven_chunks_add_up_to_the_same_time() {
        let rate = Rate::mib_per_sec(0.5).unwrap();
        let chunks: Vec<u64> = (0..1000).map(|i| 1 + (i * 7919) % 20_000).collect();
        let start = Instant::now();
        let (_, end) = simulate(rate, &chunks, start);
        let total: u64 = chunks.iter().sum();
        let expected = total as f64 / rate.bytes_per_sec();
        let seconds = (end - start).as_secs_f64();
        assert!((seconds - expected).abs() < 0.01, "{seconds} vs {expected}");
    }

    #[test]
    fn a_rate_of_zero_is_none() {
        assert_eq!(Rate::mib_per_sec(0.0), None);
        assert_eq!(Rate::mib_per_sec(-1.0), None);
        assert_eq!(Rate::mib_per_sec(f64::NAN), None);
        assert_eq!(Rate::mib_per_sec(1.5).unwrap().bytes_per_sec(), 1.5 * MIB);
    }

    fn stored(id: &str) -> Stored {
        Stored {
            id: id.into(),
            project: "p".into(),
            system_name: "s".into(),
            external_id: id.into(),
            key: format!("1/{id}.mp4"),
            size: 10,
            sha256: "a".repeat(64),
            md5: None,
            damaged: false,
        }
    }

    #[test]
    fn a_report_counts_every_kind_and_lists_a_bounded_number() {
        let mut report = Report::default();
        report.add(&stored("w"), Settled::Whole { cleared: false });
        report.add(&stored("c"), Settled::Whole { cleared: true });
        report.add(&stored("x"), Settled::Changed);
        report.add(
            &stored("m"),
            Settled::Bad(Problem::Missing { expected_size: 10 }),
        );
        report.add(
            &stored("u"),
            Settled::Bad(Problem::Unreadable {
                error: "denied".into(),
            }),
        );
        assert_eq!(
            (report.checked, report.ok, report.cleared, report.changed),
            (5, 2, 1, 1)
        );
        assert_eq!(
            (report.missing, report.unreadable, report.bad_count()),
            (1, 1, 2)
        );
        assert_eq!(report.bad[0].external_id, "m");
        assert_eq!(report.bad[0].key, "1/m.mp4");
        for i in 0..MOST_LISTED {
            report.add(
                &stored(&i.to_string()),
                Settled::Bad(Problem::WrongSize {
                    expected: 10,
                    found: 9,
                }),
            );
        }
        assert_eq!(report.wrong_size, MOST_LISTED as u64);
        assert_eq!(report.bad.len(), MOST_LISTED);
        assert_eq!(report.not_listed, 2);
        assert_eq!(report.bad_count(), MOST_LISTED as u64 + 2);
    }

    #[test]
    fn problems_say_what_was_expected_and_found() {
        let wrong = Problem::WrongSize {
            expected: 2815,
            found: 1000,
        };
        assert_eq!(
            wrong.to_string(),
            "wrong size: expected 2815 bytes, found 1000"
        );
        assert_eq!(wrong.kind(), Some(DamageKind::WrongSize));
        assert_eq!(
            serde_json::to_value(&wrong).unwrap(),
            serde_json::json!({"problem": "wrongSize", "expected": 2815, "found": 1000})
        );
        let missing = Problem::Missing { expected_size: 10 };
        assert_eq!(
            serde_json::to_value(&missing).unwrap(),
            serde_json::json!({"problem": "missing", "expectedSize": 10})
        );
        let unreadable = Problem::Unreadable {
            error: "boom".into(),
        };
        assert_eq!(unreadable.kind(), None);
    }
}
