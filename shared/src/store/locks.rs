//! Advisory locks that let one process at a time do a piece of work.

use anyhow::Context;

/// Runs `work` unless another process holds the sweeper's lock; `None` then. The lock is
/// PostgreSQL's, held by one connection for the duration, so it ends with a crashed process.
pub async fn while_sweep_locked<T, F>(
    pool: &deadpool_postgres::Pool,
    work: F,
) -> anyhow::Result<Option<T>>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    const SWEEP_LOCK: i64 = 0x0073_7765_6570;
    let client = pool
        .get()
        .await
        .context("connecting for the sweeper's lock")?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&SWEEP_LOCK])
        .await
        .context("taking the sweeper's lock")?
        .get(0);
    if !locked {
        return Ok(None);
    }
    let result = work.await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&SWEEP_LOCK])
        .await
        .context("releasing the sweeper's lock")?;
    result.map(Some)
}
