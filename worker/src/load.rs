//! Loading the video a fetch message names, with a cache of its job's immutable facts so
//! that loading does not read the job's row, which every group commit of that job updates.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::Context;
use deadpool_postgres::Pool;
use video_import_shared::store::items::{self, Item};
use video_import_shared::store::jobs::{self, JobFacts};

/// Job facts by job id; shared by every delivery handler behind a short-held lock.
#[derive(Default)]
pub struct JobCache {
    jobs: Mutex<HashMap<String, JobFacts>>,
}

impl JobCache {
    /// Most jobs remembered; beyond it the cache starts afresh.
    const CAPACITY: usize = 10_000;

    fn get(&self, job_id: &str) -> Option<JobFacts> {
        self.jobs
            .lock()
            .expect("job cache lock")
            .get(job_id)
            .cloned()
    }

    fn put(&self, job_id: &str, facts: &JobFacts) {
        let mut jobs = self.jobs.lock().expect("job cache lock");
        if jobs.len() >= Self::CAPACITY {
            jobs.clear();
        }
        jobs.insert(job_id.to_string(), facts.clone());
    }
}

/// Loads item `idx` of the job; `None` when the job or the item no longer exists.
pub async fn item(
    pool: &Pool,
    cache: &JobCache,
    job_id: &str,
    idx: i32,
) -> anyhow::Result<Option<Item>> {
    let client = pool.get().await.context("connecting to load the video")?;
    let facts = match cache.get(job_id) {
        Some(facts) => facts,
        None => match jobs::facts(&client, job_id).await? {
            Some(facts) => {
                cache.put(job_id, &facts);
                facts
            }
            None => return Ok(None),
        },
    };
    items::load(&client, job_id, &facts, idx).await
}
