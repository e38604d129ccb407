//! Group commit: videos that finish while a transaction is under way are recorded together
//! in the next one (`store::outcomes::record`), so the commit (and the job's counter row) is
//! paid once per group rather than once per video. A few recorders run side by side, each
//! for its own share of the jobs: a job's outcomes always go to the same recorder, so two
//! transactions of one worker never wait for each other on the job's counter row, and the
//! longer a commit takes, the larger the next group grows.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use video_import_shared::retry::until_ok;

use video_import_shared::store::items::Item;
use video_import_shared::store::outcomes::{self, Outcome, Recorded};

/// Most videos in one transaction.
const MAX_GROUP: usize = 64;
/// Transactions under way at once per worker.
const RECORDERS: usize = 4;

struct Request {
    item: Item,
    outcome: Outcome,
    reply: oneshot::Sender<Option<Recorded>>,
}

/// Hands outcomes to the recorders.
#[derive(Clone)]
pub struct Recorder {
    /// One queue per recorder.
    requests: Vec<mpsc::Sender<Request>>,
}

impl Recorder {
    /// Starts the recorders; they stop once every `Recorder` clone is dropped.
    pub fn start(pool: Pool, shutdown: CancellationToken) -> Self {
        let requests = (0..RECORDERS)
            .map(|_| {
                let (requests, receiver) = mpsc::channel(MAX_GROUP * 4);
                tokio::spawn(run(pool.clone(), receiver, shutdown.clone()));
                requests
            })
            .collect();
        Self { requests }
    }

    /// Records one video's outcome; `None` if shutdown came before it was durable.
    pub async fn record(&self, item: Item, outcome: Outcome) -> Option<Recorded> {
        let (reply, answer) = oneshot::channel();
        let mut hash = DefaultHasher::new();
        item.job_id.hash(&mut hash);
        let recorder = &self.requests[hash.finish() as usize % self.requests.len()];
        recorder
            .send(Request {
                item,
                outcome,
                reply,
            })
            .await
            .ok()?;
        answer.await.ok().flatten()
    }
}

async fn run(pool: Pool, mut receiver: mpsc::Receiver<Request>, shutdown: CancellationToken) {
    loop {
        let group = {
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            group
        };
        let batch: Vec<(Item, Outcome)> = group
            .iter()
            .map(|r| (r.item.clone(), r.outcome.clone()))
            .collect();
        let results: Vec<Option<Recorded>> = match outcomes::record(&pool, &batch).await {
            Ok(results) => results.into_iter().map(Some).collect(),
            Err(error) => {
                // One bad video (or a deadlock) must not hold up the others: go one by one,
                // each retried until the database takes it.
                tracing::warn!(error = %format!("{error:#}"), size = batch.len(), "group commit failed; recording one by one");
                let mut results = Vec::with_capacity(batch.len());
                for one in &batch {
                    let single = std::slice::from_ref(one);
                    let recorded = until_ok(&shutdown, || outcomes::record(&pool, single)).await;
                    results.push(recorded.and_then(|mut r| r.pop()));
                }
                results
            }
        };
        for (request, result) in group.into_iter().zip(results) {
            let _ = request.reply.send(result);
        }
    }
}
