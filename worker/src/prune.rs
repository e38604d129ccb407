//! The retention pruner: every `retention.interval_secs` each worker measures the age of the
//! oldest finished job still kept, and the one holding the pruner's PostgreSQL lock removes
//! the rows of jobs finished before the cutoff (`store::retention`): their videos, webhook
//! delivery and attempts and dispatch row, leaving each job's row as a tombstone; then
//! idempotency keys whose window is over. One short transaction per batch, a batch sized so
//! that it takes about [`TARGET`], and a pause after each as long as the batch took times
//! [`PAUSE_PER_BUSY`]: the pruner never holds a lock for long and leaves the database to
//! the imports most of the time, however large its backlog.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use tokio_util::sync::CancellationToken;
use video_import_shared::config::RetentionSettings;
use video_import_shared::metrics::register;
use video_import_shared::periodic;
use video_import_shared::store::locks;
use video_import_shared::store::retention::{self, Candidate, Removed};

/// How long one batch's transaction should take; batch sizes follow the measured pace.
pub const TARGET: Duration = Duration::from_millis(50);
/// The pause after a batch, as a multiple of the time it took: the pruner keeps the
/// database busy at most 1 / (1 + this) of the time.
pub const PAUSE_PER_BUSY: u32 = 3;
/// Rows of the first batch of a round, and the bounds of every batch.
const FIRST_BUDGET: u32 = 1_000;
const MIN_BUDGET: u32 = 100;
const MAX_BUDGET: u32 = 20_000;
/// Rows a job costs besides its videos: its tombstone, its delivery, an attempt or two.
const ROWS_PER_JOB: u32 = 3;
/// Jobs read per look at the candidates.
const LOOK: i64 = 500;

/// The pruner's metrics (see docs/metrics.md).
#[derive(Clone)]
pub struct PruneMetrics {
    /// Rows deleted by table; `jobs` counts rows made tombstones.
    pub rows: IntCounterVec,
    /// Seconds since the oldest finished job whose rows are kept finished.
    pub oldest: Gauge,
    /// `retention.finished_jobs_secs`, for alerts to compare the age with.
    pub window: Gauge,
    /// How long each batch's transaction took.
    pub batch_seconds: Histogram,
}

impl PruneMetrics {
    /// Registers the metrics in `registry`, every table at 0.
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let rows = IntCounterVec::new(
            Opts::new(
                "retention_rows_pruned_total",
                "Rows the retention pruner removed, by table (jobs: rows made tombstones)",
            ),
            &["table"],
        )?;
        for table in Removed::TABLES {
            rows.with_label_values(&[table]);
        }
        let oldest = Gauge::new(
            "retention_oldest_finished_age_seconds",
            "Seconds since the oldest finished job whose rows are kept finished (jobs whose webhook is still being delivered left out)",
        )?;
        let window = Gauge::new(
            "retention_window_seconds",
            "retention.finished_jobs_secs: finished jobs older than this are pruned (0: never)",
        )?;
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "retention_batch_duration_seconds",
                "Time of one pruning batch's transaction",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )?;
        register(registry, &rows);
        register(registry, &oldest);
        register(registry, &window);
        register(registry, &batch_seconds);
        Ok(Self {
            rows,
            oldest,
            window,
            batch_seconds,
        })
    }

    fn count(&self, removed: &Removed) {
        for (table, n) in removed.by_table() {
            if n > 0 {
                self.rows.with_label_values(&[table]).inc_by(n);
            }
        }
    }
}

/// Prunes finished jobs past the retention window.
pub struct Pruner {
    pool: Pool,
    retention: Duration,
    interval: Duration,
    metrics: PruneMetrics,
}

impl Pruner {
    /// A pruner for `settings`, its metrics in `registry`.
    pub fn new(
        pool: Pool,
        settings: &RetentionSettings,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let metrics = PruneMetrics::new(registry)?;
        metrics.window.set(settings.finished_jobs.as_secs_f64());
        Ok(Self {
            pool,
            retention: settings.finished_jobs,
            interval: settings.interval,
            metrics,
        })
    }

    /// Runs a round every `retention.interval_secs` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        periodic::every(
            self.interval,
            shutdown.clone(),
            "the retention pruner cannot prune; finished jobs keep their rows until it can",
            "the retention pruner recovered",
            || self.round(&shutdown),
        )
        .await;
    }

    /// Measures the oldest finished job kept and, if no other worker is at it, prunes.
    pub async fn round(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        self.measure().await?;
        let started = Instant::now();
        // Every statement of the round runs on the connection that holds the lock: should
        // it be lost (and the lock with it, for another worker to take), the round stops at
        // its next statement instead of pruning beside the new holder.
        let Some(mut held) = locks::Held::try_take(&self.pool, locks::PRUNE_LOCK).await? else {
            return Ok(());
        };
        let pruned = self.prune(&mut held, shutdown).await;
        held.release().await;
        let removed = pruned?;
        if removed.jobs > 0 || removed.deleted() > 0 {
            tracing::info!(
                jobs = removed.jobs,
                job_items = removed.job_items,
                webhook_attempts = removed.webhook_attempts,
                webhook_deliveries = removed.webhook_deliveries,
                dispatch = removed.dispatch,
                idempotency_keys = removed.idempotency_keys,
                seconds = started.elapsed().as_secs_f64(),
                "pruned finished jobs past the retention window"
            );
            self.measure().await?;
        }
        Ok(())
    }

    async fn measure(&self) -> anyhow::Result<()> {
        let client = self
            .pool
            .get()
            .await
            .context("connecting to measure retention")?;
        let age = retention::oldest_kept(&client).await?;
        self.metrics.oldest.set(age.unwrap_or(0.0));
        Ok(())
    }

    /// Prunes every job finished before the cutoff, then the expired idempotency keys, a
    /// batch at a time, until none is left or `shutdown`.
    async fn prune(
        &self,
        held: &mut locks::Held,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Removed> {
        let mut total = Removed::default();
        let now = retention::now(held.client()).await?;
        let Some(cutoff) = cutoff(now, self.retention) else {
            return Ok(total);
        };
        let mut budget = FIRST_BUDGET;
        let mut queue: VecDeque<Pending> = VecDeque::new();
        loop {
            if shutdown.is_cancelled() {
                return Ok(total);
            }
            if queue.is_empty() {
                // A round can go on for hours through a backlog: the gauge follows it.
                self.measure().await?;
                queue.extend(
                    retention::candidates(held.client(), cutoff, LOOK)
                        .await?
                        .into_iter()
                        .map(Pending::from),
                );
                if queue.is_empty() {
                    break;
                }
            }
            let Some(step) = take(&mut queue, budget) else {
                break;
            };
            let started = Instant::now();
            let removed = match run_step(held, &step).await? {
                Some(removed) => removed,
                None => {
                    // Its webhook is being delivered again: it waits for a later round.
                    if let Step::Items { job_id, .. } = &step {
                        queue.retain(|p| &p.job_id != job_id);
                    }
                    Removed::default()
                }
            };
            let took = started.elapsed();
            self.after_batch(&removed, took, &mut budget, shutdown)
                .await;
            total += removed;
        }
        loop {
            if shutdown.is_cancelled() {
                return Ok(total);
            }
            let started = Instant::now();
            let asked = budget;
            let keys = retention::expired_keys(held.client(), asked as i64).await?;
            let removed = Removed {
                idempotency_keys: keys,
                ..Removed::default()
            };
            self.after_batch(&removed, started.elapsed(), &mut budget, shutdown)
                .await;
            total += removed;
            if keys < asked as u64 {
                break;
            }
        }
        Ok(total)
    }

    /// Counts a batch, sizes the next one and pauses.
    async fn after_batch(
        &self,
        removed: &Removed,
        took: Duration,
        budget: &mut u32,
        shutdown: &CancellationToken,
    ) {
        self.metrics.count(removed);
        self.metrics.batch_seconds.observe(took.as_secs_f64());
        *budget = next_budget(*budget, removed.jobs + removed.deleted(), took);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(took * PAUSE_PER_BUSY) => {}
        }
    }
}

/// One batch, in one transaction on the connection holding the pruner's lock; `None` when
/// the first batch of a large job found its webhook being delivered again (nothing was
/// removed).
async fn run_step(held: &mut locks::Held, step: &Step) -> anyhow::Result<Option<Removed>> {
    match step {
        Step::Items { job_id, from, to } if *from == 0 => {
            let tx = held
                .client_mut()
                .transaction()
                .await
                .context("starting to prune")?;
            let removed = retention::start_items(&tx, job_id, *from, *to).await?;
            tx.commit().await.context("committing a pruning batch")?;
            Ok(removed)
        }
        Step::Items { job_id, from, to } => Ok(Some(Removed {
            job_items: retention::prune_items(held.client(), job_id, *from, *to).await?,
            ..Removed::default()
        })),
        Step::Jobs(ids) => {
            let tx = held
                .client_mut()
                .transaction()
                .await
                .context("starting to prune")?;
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let removed = retention::prune_jobs(&tx, &ids).await?;
            tx.commit().await.context("committing a pruning batch")?;
            Ok(Some(removed))
        }
    }
}

/// The cutoff: jobs finished before it are pruned. `None` when retention is off (zero) or
/// reaches back before any date this can hold (nothing is that old).
pub fn cutoff(now: DateTime<Utc>, retention: Duration) -> Option<DateTime<Utc>> {
    if retention.is_zero() {
        return None;
    }
    let retention = chrono::Duration::from_std(retention).ok()?;
    now.checked_sub_signed(retention)
}

/// A job being pruned: its item rows `from..total` are left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The job.
    pub job_id: String,
    /// Its number of videos.
    pub total: i32,
    /// The first of its videos whose row is not yet deleted.
    pub from: i32,
}

impl From<Candidate> for Pending {
    fn from(c: Candidate) -> Self {
        Pending {
            job_id: c.job_id,
            total: c.total,
            from: 0,
        }
    }
}

impl Pending {
    /// Rows its last batch removes.
    fn cost(&self) -> u32 {
        (self.total - self.from).max(0) as u32 + ROWS_PER_JOB
    }
}

/// One batch: whole jobs, or a range of one large job's items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Remove these jobs' rows and make them tombstones.
    Jobs(Vec<String>),
    /// Delete items `from..to` of a job with more than a batch of them.
    Items { job_id: String, from: i32, to: i32 },
}

/// The next batch of at most `budget` rows from the front of `queue`: as many whole jobs
/// as fit (at least one), or, when the first job alone is larger, a budget's worth of its
/// items (the job stays at the front with fewer left).
pub fn take(queue: &mut VecDeque<Pending>, budget: u32) -> Option<Step> {
    let budget = budget.max(1);
    let first = queue.front_mut()?;
    if first.from < first.total && first.cost() > budget {
        let rows = budget.saturating_sub(ROWS_PER_JOB).max(1) as i32;
        let to = first.from.saturating_add(rows).min(first.total);
        let step = Step::Items {
            job_id: first.job_id.clone(),
            from: first.from,
            to,
        };
        first.from = to;
        return Some(step);
    }
    let mut ids = Vec::new();
    let mut rows = 0;
    while let Some(next) = queue.front() {
        let cost = next.cost();
        if !ids.is_empty() && rows + cost > budget {
            break;
        }
        rows += cost;
        ids.push(queue.pop_front().expect("a front").job_id);
    }
    Some(Step::Jobs(ids))
}

/// The next batch's size after one of `rows` rows took `took`: the size that would take
/// [`TARGET`] at the pace measured, moving at most by half or double per batch (one slow
/// batch, a checkpoint or a lock wait, does not collapse it), within the bounds.
pub fn next_budget(budget: u32, rows: u64, took: Duration) -> u32 {
    if rows == 0 || took.is_zero() {
        return budget.clamp(MIN_BUDGET, MAX_BUDGET);
    }
    let paced = rows as f64 * TARGET.as_secs_f64() / took.as_secs_f64();
    let lower = (budget / 2).max(MIN_BUDGET) as f64;
    let upper = (budget.saturating_mul(2)).min(MAX_BUDGET) as f64;
    paced.clamp(lower.min(upper), upper) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str, total: i32) -> Pending {
        Pending {
            job_id: id.into(),
            total,
            from: 0,
        }
    }

    fn ids(list: &[&str]) -> Step {
        Step::Jobs(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn the_cutoff_is_the_retention_before_the_database_clock() {
        let now = DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            cutoff(now, Duration::from_secs(30 * 86_400)),
            Some(
                DateTime::parse_from_rfc3339("2026-11-03T10:00:00Z")
                    .unwrap()
                    .to_utc()
            )
        );
        assert_eq!(
            cutoff(now, Duration::from_secs(5)),
            Some(now - chrono::Duration::seconds(5))
        );
        assert_eq!(cutoff(now, Duration::ZERO), None, "0 keeps everything");
        assert_eq!(
            cutoff(now, Duration::from_secs(u64::MAX)),
            None,
            "longer than any date: nothing is that old"
        );
    }

    #[test]
    fn small_jobs_go_together_up_to_the_budget() {
        let mut queue: VecDeque<Pending> = [
            pending("a", 100),
            pending("b", 300),
            pending("c", 600),
            pending("d", 1),
        ]
        .into_iter()
        .collect();
        // a and b cost 103 + 303; c (603) would pass 1000.
        assert_eq!(take(&mut queue, 1000), Some(ids(&["a", "b"])));
        assert_eq!(take(&mut queue, 1000), Some(ids(&["c", "d"])));
        assert_eq!(take(&mut queue, 1000), None);
    }

    #[test]
    fn a_job_larger_than_a_batch_goes_in_ranges_of_its_items() {
        let mut queue: VecDeque<Pending> = [pending("big", 2500), pending("small", 10)]
            .into_iter()
            .collect();
        let chunk = |from, to| Step::Items {
            job_id: "big".into(),
            from,
            to,
        };
        assert_eq!(take(&mut queue, 1000), Some(chunk(0, 997)));
        assert_eq!(take(&mut queue, 1000), Some(chunk(997, 1994)));
        // The rest (506 items) fits: the job goes with the next, and only then is marked.
        assert_eq!(take(&mut queue, 1000), Some(ids(&["big", "small"])));
        assert!(queue.is_empty());
    }

    #[test]
    fn every_batch_stays_within_its_budget() {
        for budget in [1, 4, 50, 997, 1000, 20_000] {
            let mut queue: VecDeque<Pending> = (0..200)
                .map(|i| pending(&format!("j{i}"), (i * 37) % 3000 + 1))
                .collect();
            let total: i64 = queue.iter().map(|p| p.total as i64).sum();
            let mut items = 0i64;
            let mut jobs = 0;
            while let Some(step) = take(&mut queue, budget) {
                match step {
                    Step::Items { from, to, .. } => {
                        assert!(to > from);
                        assert!((to - from) as u32 + ROWS_PER_JOB <= budget.max(ROWS_PER_JOB + 1));
                        items += (to - from) as i64;
                    }
                    Step::Jobs(ids) => {
                        assert!(!ids.is_empty());
                        jobs += ids.len();
                    }
                }
            }
            assert_eq!(jobs, 200, "budget {budget}: every job is marked once");
            assert!(items <= total, "budget {budget}");
        }
    }

    #[test]
    fn batches_grow_and_shrink_towards_the_target_time() {
        // 1000 rows in 10 ms: 5,000 rows would take 50 ms, but a batch at most doubles.
        assert_eq!(next_budget(1000, 1000, Duration::from_millis(10)), 2000);
        // 1000 rows in 80 ms: 625 rows take 50 ms.
        assert_eq!(next_budget(1000, 1000, Duration::from_millis(80)), 625);
        // A batch stalled for a second (a lock wait, a checkpoint) halves it, no more.
        assert_eq!(next_budget(1000, 1000, Duration::from_secs(1)), 500);
        // Within the bounds.
        assert_eq!(next_budget(150, 150, Duration::from_secs(1)), MIN_BUDGET);
        assert_eq!(
            next_budget(MAX_BUDGET, 20_000, Duration::from_millis(1)),
            MAX_BUDGET
        );
        // A batch that removed nothing says nothing about the pace.
        assert_eq!(next_budget(1000, 0, Duration::from_millis(3)), 1000);
    }
}
