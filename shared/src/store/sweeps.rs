//! When the storage sweeper last finished, so that the workers of a fleet, each looking
//! every interval, sweep once per interval between them.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::GenericClient;

/// Whether a sweep finished less than `interval` ago (by the database's clock, which every
/// worker shares).
pub async fn finished_within(
    client: &impl GenericClient,
    interval: Duration,
) -> anyhow::Result<bool> {
    let row = client
        .query_opt(
            "SELECT 1 FROM storage_sweep
             WHERE last_finished_at > now() - make_interval(secs => $1)",
            &[&interval.as_secs_f64()],
        )
        .await
        .context("reading when the last sweep finished")?;
    Ok(row.is_some())
}

/// Notes that a sweep finished now.
pub async fn record_finished(client: &impl GenericClient) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO storage_sweep (last_finished_at) VALUES (now())
             ON CONFLICT (singleton) DO UPDATE SET last_finished_at = excluded.last_finished_at",
            &[],
        )
        .await
        .context("noting that the sweep finished")?;
    Ok(())
}
