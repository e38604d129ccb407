//! Advisory locks that let one process at a time do a piece of work.

use anyhow::Context;

/// The storage sweeper's lock (any number, so long as every process agrees on it).
const SWEEP_LOCK: i64 = 0x0073_7765_6570;
/// The retention pruner's lock: one pruner at a time across workers (taken with [`Held`], so
/// that a pruner whose connection and lock are lost stops at its next statement).
pub const PRUNE_LOCK: i64 = 0x0070_7275_6e65;

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

/// The storage verifier's lock: one continuous verifier at a time across workers.
pub const VERIFY_LOCK: i64 = 0x0076_6572_6966;

/// A session advisory lock held on one pooled connection. The holder does its database work
/// through [`Held::client`]: should that connection (and with it the lock) be lost, its
/// next statement fails and the work stops, so two holders never work on for long.
pub struct Held {
    client: Option<deadpool_postgres::Object>,
    key: i64,
}

impl Held {
    /// Takes lock `key` unless another session holds it (`None` then).
    pub async fn try_take(
        pool: &deadpool_postgres::Pool,
        key: i64,
    ) -> anyhow::Result<Option<Held>> {
        let client = pool.get().await.context("connecting for a lock")?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .context("taking a lock")?
            .get(0);
        Ok(locked.then_some(Held {
            client: Some(client),
            key,
        }))
    }

    /// The connection that holds the lock.
    pub fn client(&self) -> &deadpool_postgres::Object {
        self.client
            .as_ref()
            .expect("held until released or dropped")
    }

    /// The connection that holds the lock, for a transaction.
    pub fn client_mut(&mut self) -> &mut deadpool_postgres::Object {
        self.client
            .as_mut()
            .expect("held until released or dropped")
    }

    /// Releases the lock; the connection goes back to the pool.
    pub async fn release(mut self) {
        let client = self.client.take().expect("held until released");
        if client
            .execute("SELECT pg_advisory_unlock($1)", &[&self.key])
            .await
            .is_err()
        {
            // Closing the connection ends the lock too.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl Drop for Held {
    /// Dropped without [`Held::release`] (a panic, a cancelled task): the connection is
    /// closed rather than handed back to the pool still holding the lock.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}
