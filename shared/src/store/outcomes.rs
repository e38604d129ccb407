//! Recording videos' outcomes: one transaction per group of finished videos (one commit and
//! one counter update per job), guarded by each item's `pending` state so that redelivered
//! messages change nothing.

use std::collections::BTreeMap;

use anyhow::Context;
use deadpool_postgres::Transaction;

use super::entries::{self, EntryChange, NewAsset};
use super::items;
use super::jobs::{self, Counts};
use super::model::Item;
use super::webhooks::RoundStarted;
use super::ItemState;

/// What happened to a video.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A new copy is stored at `asset.key`.
    Downloaded(Box<NewAsset>),
    /// The source said the stored copy is current (HTTP 304).
    Unchanged,
    /// It will not be imported, for this reason.
    Failed(String),
}

impl Outcome {
    /// The reason of a failure ("" for the others).
    pub fn reason(&self) -> &str {
        match self {
            Outcome::Failed(reason) => reason,
            _ => "",
        }
    }
}

/// What the transaction did for one video.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// Another delivery of the same message got there first.
    AlreadyDone,
    /// Nothing was recorded and the video is still pending: the source said it was
    /// unchanged (or its checksum named the stored file), but that stored file was marked
    /// damaged after this was decided. Download it again, with no conditional request and
    /// no checksum-match skip.
    DamagedMeanwhile,
    /// The item ended in `state`.
    Done {
        state: ItemState,
        /// It was the job's last item: the job's duration in seconds.
        job_finished: Option<f64>,
        /// The entry now points at the downloaded asset (otherwise it may be deleted).
        asset_used: bool,
        /// The asset this one replaced, to delete now that the commit is done.
        replaced_key: Option<String>,
    },
}

/// Planner settings for a transaction of key lookups: index lookups in nested loops,
/// whatever the statistics say (they only discourage the other kinds, where no index fits),
/// each statement planned once per session and that plan kept (the worker runs these in
/// sessions set up so already, `db::connect_key_lookups`; this holds on any connection).
const KEY_LOOKUPS_ONLY: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
     SET LOCAL enable_mergejoin = off; SET LOCAL plan_cache_mode = force_generic_plan";

/// Records the outcomes of several videos in the caller's transaction: upserts their
/// entries, marks their items, counts them on their jobs and finishes the jobs whose last
/// video this was. Returns each video's result and the webhook rounds the finished jobs
/// started, which the caller announces before it commits.
/// Set-based: one statement locks the group's pending items, one its existing entries, one
/// inserts its new entries, one marks its items, one counts per job (only changed entries
/// are updated one by one). Touches no storage: the caller removes what the results say is
/// unused. Rows are locked in a fixed order (items, entries, jobs) so that concurrent groups
/// do not deadlock.
pub async fn record(
    tx: &Transaction<'_>,
    batch: &[(Item, Outcome)],
) -> anyhow::Result<(Vec<Recorded>, Vec<RoundStarted>)> {
    // Every statement of a group looks rows up by key. A plan cached while the tables were
    // nearly empty (a fresh install, a migration's first minute) hashed or scanned whole
    // tables until the next ANALYZE: 0.5–1 ms per statement instead of 0.1–0.2. Planned on
    // every call instead, the group's statements spent a third of their time planning.
    let set_up = async {
        tx.batch_execute(KEY_LOOKUPS_ONLY)
            .await
            .context("setting up the outcome transaction")
    };
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|&a, &b| {
        (&batch[a].0.job_id, batch[a].0.idx).cmp(&(&batch[b].0.job_id, batch[b].0.idx))
    });
    let keys: Vec<(&str, i32)> = batch
        .iter()
        .map(|(item, _)| (item.job_id.as_str(), item.idx))
        .collect();
    // Sent together (tokio-postgres pipelines the requests of futures polled together; the
    // server runs them in the order sent): one round trip instead of two.
    let ((), pending) = tokio::try_join!(set_up, items::lock_pending(tx, &keys))?;
    let is_pending = |item: &Item| pending.contains(&(item.job_id.clone(), item.idx));
    let mut entry_keys: Vec<entries::EntryKey> = batch
        .iter()
        .filter(|(item, outcome)| !matches!(outcome, Outcome::Failed(_)) && is_pending(item))
        .map(|(item, _)| entries::key_of(item))
        .collect();
    entry_keys.sort();
    entry_keys.dedup();
    let mut current = if entry_keys.is_empty() {
        Default::default()
    } else {
        entries::lock_existing(tx, &entry_keys).await?
    };
    let mut writes = entries::Writes::default();
    let mut results = vec![Recorded::AlreadyDone; batch.len()];
    let mut per_job: BTreeMap<&str, (Counts, Vec<usize>)> = BTreeMap::new();
    let mut finished = items::Finished::default();
    for i in order {
        let (item, outcome) = &batch[i];
        if !is_pending(item) {
            continue;
        }
        let change = match outcome {
            Outcome::Failed(reason) => Some(EntryChange {
                state: Some(ItemState::Failed),
                reason: Some(reason.clone()),
                ..EntryChange::default()
            }),
            Outcome::Downloaded(asset) => writes.plan(&mut current, item, Some(asset)),
            Outcome::Unchanged => writes.plan(&mut current, item, None),
        };
        let Some(change) = change else {
            results[i] = Recorded::DamagedMeanwhile;
            continue;
        };
        let state = change
            .state
            .expect("an entry change names the item's state");
        finished.push(
            &item.job_id,
            item.idx,
            state,
            change.reason,
            change.media_id,
        );
        let (counts, members) = per_job.entry(item.job_id.as_str()).or_default();
        counts.add(state);
        members.push(i);
        results[i] = Recorded::Done {
            state,
            job_finished: None,
            asset_used: change.asset_used,
            replaced_key: change.replaced_key,
        };
    }
    let counts: Vec<(&str, Counts)> = per_job
        .iter()
        .map(|(job_id, (counts, _))| (*job_id, counts.clone()))
        .collect();
    let count = async {
        if counts.is_empty() {
            return Ok(Vec::new());
        }
        jobs::count_finished_all(tx, &counts).await
    };
    // The entry writes, the item marks and the job counts go out together (one round trip
    // instead of three), in the order of the locks (entries, then jobs) once their
    // statements are prepared, as they are after a connection's first group. A first group
    // whose preparations answer out of order may lock a job before inserting an entry; a
    // deadlock that caused would fail the group, which is then recorded one video at a time.
    let ((), (), counted) = tokio::try_join!(writes.write(tx), finished.write(tx), count)?;
    let mut rounds = Vec::new();
    for (job_id, done) in counted {
        let Some(done) = done else { continue };
        let first = per_job.get(job_id.as_str()).map(|(_, members)| members[0]);
        if let Some(Recorded::Done { job_finished, .. }) = first.and_then(|i| results.get_mut(i)) {
            *job_finished = Some(done.seconds);
        }
        rounds.extend(done.webhook);
    }
    Ok((results, rounds))
}
