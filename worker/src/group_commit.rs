//! Group commit: videos that finish while a transaction is under way are recorded together
//! in the next one (`store::outcomes::record`, through `shared::batch`), so the commit (and
//! each job's counter row) is paid once per group rather than once per video. One recorder
//! per worker: the longer a commit takes, the larger the next group grows, whatever the
//! number of jobs under way. (Recorders for shares of the jobs, tried before, split a busy
//! worker's videos into groups a quarter the size once many jobs ran at once: 2.2 videos
//! per transaction with 100 jobs against 6.9 with one, and 1,041 against 1,326 videos/s in
//! the fair-growth benchmark.) A busy recorder also waits a few milliseconds for more
//! outcomes before it begins (`RECORD_LINGER`), so that groups grow under load.

use anyhow::Context;
use deadpool_postgres::Pool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use video_import_shared::batch::{Batcher, Linger};
use video_import_shared::outbox;
use video_import_shared::retry::until_ok;
use video_import_shared::store::outcomes::{self, Outcome, Recorded};
use video_import_shared::store::{items, Item};

/// Most videos in one transaction.
const MAX_GROUP: usize = 64;

/// Transactions the recorder runs at once.
const RECORDERS: usize = 1;
/// Pending checks run at once.
const CHECKERS: usize = 2;
/// How long a busy recorder waits for more outcomes before it starts a transaction. Each
/// group pays about ten statements and a commit whatever its size: waiting 4 ms while busy
/// halved the worker's transactions per video and took a fifth off PostgreSQL's CPU per
/// video (docs/benchmarks.md, tenth round). A lone outcome is recorded at once.
const RECORD_LINGER: Linger = Linger::WhileBusy(Duration::from_millis(4));
/// The same for the pending checks, which a download waits for: half as long.
const CHECK_LINGER: Linger = Linger::WhileBusy(Duration::from_millis(2));
/// Database sessions the recorder and the pending checks need: the size of their
/// key-lookup pool (`db::connect_key_lookups`).
pub const KEY_LOOKUP_SESSIONS: usize = RECORDERS + CHECKERS;

/// A video's outcome, and the `traceparent` of the span that reached it: when the video is
/// its job's last, that span is the parent of the job's webhook delivery.
type Finished = (Item, Outcome, Option<String>);

/// Hands outcomes to the recorder.
pub struct Recorder {
    batcher: Batcher<Finished, Option<Recorded>>,
}

impl Recorder {
    /// Starts the recorder on `key_lookups` (a pool of `db::connect_key_lookups`); it stops
    /// once the `Recorder` is dropped.
    pub fn start(key_lookups: Pool, shutdown: CancellationToken) -> Self {
        let batcher = Batcher::start_lingering(
            RECORDERS,
            MAX_GROUP,
            RECORD_LINGER,
            move |group: Vec<Finished>| {
                let pool = key_lookups.clone();
                let shutdown = shutdown.clone();
                async move { Ok(record_group(&pool, &shutdown, group).await) }
            },
        );
        Self { batcher }
    }

    /// Records one video's outcome, reached in the span `trace`; `None` if shutdown came
    /// before it was durable.
    pub async fn record(
        &self,
        item: Item,
        outcome: Outcome,
        trace: Option<String>,
    ) -> Option<Recorded> {
        self.batcher
            .submit((item, outcome, trace))
            .await
            .ok()
            .flatten()
    }
}

/// Checks whether videos are still pending, many in one query: the videos whose messages
/// arrive while a check is under way are checked together by the next one.
pub struct PendingCheck {
    batcher: Batcher<(String, i32), bool>,
}

impl PendingCheck {
    /// Starts the checkers on `key_lookups` (a pool of `db::connect_key_lookups`); they stop
    /// once the `PendingCheck` is dropped.
    pub fn start(key_lookups: Pool) -> Self {
        Self {
            batcher: Batcher::start_lingering(
                CHECKERS,
                MAX_GROUP,
                CHECK_LINGER,
                move |group: Vec<(String, i32)>| {
                    let pool = key_lookups.clone();
                    async move {
                        let client = pool.get().await.context("no database connection")?;
                        items::pending_among(&client, &group).await
                    }
                },
            ),
        }
    }

    /// Whether item `idx` of job `job_id` is still pending.
    pub async fn is_pending(&self, job_id: &str, idx: i32) -> anyhow::Result<bool> {
        self.batcher.submit((job_id.to_string(), idx)).await
    }
}

/// Records a group in one transaction; if that fails, one by one, so that one bad video (or
/// a deadlock) does not hold up the others, each retried until the database takes it.
async fn record_group(
    pool: &Pool,
    shutdown: &CancellationToken,
    group: Vec<Finished>,
) -> Vec<Option<Recorded>> {
    let (group, traces): (Vec<(Item, Outcome)>, Vec<Option<String>>) = group
        .into_iter()
        .map(|(item, outcome, trace)| ((item, outcome), trace))
        .unzip();
    match record(pool, &group, &traces).await {
        Ok(results) => results.into_iter().map(Some).collect(),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), size = group.len(), "group commit failed; recording one by one");
            let mut results = Vec::with_capacity(group.len());
            for (one, trace) in group.iter().zip(&traces) {
                let single = std::slice::from_ref(one);
                let trace = std::slice::from_ref(trace);
                let recorded = until_ok(shutdown, || record(pool, single, trace)).await;
                results.push(recorded.and_then(|mut r| r.pop()));
            }
            results
        }
    }
}

/// Records a group's outcomes in one transaction, with the webhook rounds of the jobs it
/// finished queued in the outbox before the commit. `traces[i]` is the span of `group[i]`:
/// a finished job's webhook round is started in the span of its video recorded last.
pub async fn record(
    pool: &Pool,
    group: &[(Item, Outcome)],
    traces: &[Option<String>],
) -> anyhow::Result<Vec<Recorded>> {
    let mut client = pool.get().await.context("connecting to record outcomes")?;
    let tx = client
        .transaction()
        .await
        .context("starting the outcome transaction")?;
    let (results, mut rounds) = outcomes::record(&tx, group).await?;
    for round in &mut rounds {
        round.traceparent = group
            .iter()
            .zip(traces)
            .rev()
            .find(|((item, _), _)| item.job_id == round.job_id)
            .and_then(|(_, trace)| trace.clone());
    }
    outbox::announce(&tx, &rounds).await?;
    tx.commit().await.context("committing the outcomes")?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use video_import_shared::config::DatabaseSettings;
    use video_import_shared::db;
    use video_import_shared::store::{items, migrate};

    /// How often the pending check's statement was planned on the pool's one session, for
    /// checks of 1 to 8 videos, and the plan its last run used (for an empty job list).
    async fn pending_check_plans(pool: &deadpool_postgres::Pool) -> (i64, i64, String) {
        let client = pool.get().await.unwrap();
        for n in 1..=8 {
            let group: Vec<(String, i32)> = (0..n).map(|i| ("j".to_string(), i)).collect();
            let pending = items::pending_among(&client, &group).await.unwrap();
            assert_eq!(pending, vec![false; n as usize], "no such items");
        }
        let row = client
            .query_one(
                "SELECT name, custom_plans, generic_plans FROM pg_prepared_statements
                 WHERE statement LIKE '%WITH ORDINALITY AS u(job_id, idx, n)%'
                     AND statement NOT LIKE '%pg_prepared_statements%'",
                &[],
            )
            .await
            .unwrap();
        let name: String = row.get(0);
        let plan = client
            .simple_query(&format!(
                "EXPLAIN EXECUTE {name}('{{j}}', '{{1}}', 'pending')"
            ))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        (row.get(1), row.get(2), plan)
    }

    #[tokio::test]
    async fn the_pending_check_is_planned_once_per_session_as_index_lookups() {
        let database = video_import_tests::Database::create().await;
        let settings = DatabaseSettings {
            pool_size: 1,
            ..database.settings()
        };
        let plain = db::connect(&settings).await.unwrap();
        migrate::run(&plain).await.unwrap();

        // PostgreSQL's own choice: a plan that knows the arrays' lengths, made again per call.
        let (custom, _, _) = pending_check_plans(&plain).await;
        assert!(
            custom >= 5,
            "planned per call by default: {custom} custom plans"
        );

        // Planned once, while job_items is empty, and still one index lookup per item.
        let key_lookups = db::connect_key_lookups(&settings, 1).await.unwrap();
        let (custom, generic, plan) = pending_check_plans(&key_lookups).await;
        assert_eq!(
            (custom, generic),
            (0, 8),
            "one plan, kept, for all eight checks"
        );
        assert!(
            plan.contains("Index") && !plan.contains("Seq Scan on job_items"),
            "one index lookup per item, even planned on an empty table:\n{plan}"
        );
    }
}
