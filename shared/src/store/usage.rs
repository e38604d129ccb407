//! The daily-limit window: a project's jobs of the last 24 hours.

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;

/// The project's jobs of the last 24 hours, oldest first.
#[derive(Debug, Clone)]
pub struct UsageWindow {
    /// Each job's video count and start.
    pub jobs: Vec<(i64, DateTime<Utc>)>,
    /// The database's clock, which the window was measured with.
    pub now: DateTime<Utc>,
}

/// Locks the project row (so concurrent batches of one project are counted one after the
/// other) and reads its jobs of the last 24 hours.
pub async fn window(tx: &Transaction<'_>, project_id: i64) -> anyhow::Result<UsageWindow> {
    tx.execute(
        "SELECT 1 FROM projects WHERE id = $1 FOR UPDATE",
        &[&project_id],
    )
    .await
    .context("locking the project for its daily limit")?;
    let rows = tx
        .query(
            "SELECT total, started_at, now() FROM jobs
             WHERE project_id = $1 AND started_at > now() - interval '24 hours'
             ORDER BY started_at",
            &[&project_id],
        )
        .await
        .context("reading the project's jobs of the last 24 hours")?;
    Ok(UsageWindow {
        now: rows.first().map(|r| r.get(2)).unwrap_or_else(Utc::now),
        jobs: rows
            .iter()
            .map(|r| (r.get::<_, i32>(0) as i64, r.get(1)))
            .collect(),
    })
}
