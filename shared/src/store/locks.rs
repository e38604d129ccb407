//! Advisory locks that let one process at a time do a piece of work.

use anyhow::Context;

/// The storage sweeper's lock (any number, so long as every process agrees on it).
const SWEEP_LOCK: i64 = 0x0073_7765_6570;
/// The retention pruner's lock.
const PRUNE_LOCK: i64 = 0x0070_7275_6e65;

/// Runs `work` unless another process holds the sweeper's lock; `None` then. The lock is
/// PostgreSQL's, held by one connection for the duration, so it ends with a crashed process.
pub async fn while_sweep_locked<T, F>(
    pool: &deadpool_postgres::Pool,
    work: F,
) -> anyhow::Result<Option<T>>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    while_locked(pool, SWEEP_LOCK, "the sweeper's lock", work).await
}

/// Runs `work` unless another process holds the retention pruner's lock; `None` then. As
/// for the sweeper, the lock ends with the connection, so a crashed pruner leaves none.
pub async fn while_prune_locked<T, F>(
    pool: &deadpool_postgres::Pool,
    work: F,
) -> anyhow::Result<Option<T>>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    while_locked(pool, PRUNE_LOCK, "the pruner's lock", work).await
}

/// Runs `work` while one pooled connection holds the session-level advisory lock `key`
/// (named `what` in errors); `None` without running it when another process holds it.
async fn while_locked<T, F>(
    pool: &deadpool_postgres::Pool,
    key: i64,
    what: &str,
    work: F,
) -> anyhow::Result<Option<T>>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let client = pool
        .get()
        .await
        .with_context(|| format!("connecting for {what}"))?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .with_context(|| format!("taking {what}"))?
        .get(0);
    if !locked {
        return Ok(None);
    }
    let result = work.await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .with_context(|| format!("releasing {what}"))?;
    result.map(Some)
}
