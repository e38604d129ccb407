//! The schema: embedded migrations applied in order under an advisory lock.

use anyhow::Context;
use deadpool_postgres::Pool;

/// Embedded migrations, applied in order; append, never edit.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (
        2,
        include_str!("migrations/0002_webhook_rotation_redelivery.sql"),
    ),
    (3, include_str!("migrations/0003_asset_details.sql")),
    (4, include_str!("migrations/0004_idempotency.sql")),
    (5, include_str!("migrations/0005_fillfactor.sql")),
    (6, include_str!("migrations/0006_asset_key_index.sql")),
    (7, include_str!("migrations/0007_cancel.sql")),
    (8, include_str!("migrations/0008_backlog_indexes.sql")),
    (9, include_str!("migrations/0009_trace.sql")),
    (10, include_str!("migrations/0010_dispatch.sql")),
    (11, include_str!("migrations/0011_webhook_hold.sql")),
    (12, include_str!("migrations/0012_webhook_rounds.sql")),
];

/// Any number so long as every process agrees on it: serialises concurrent `migrate` runs.
const MIGRATION_LOCK: i64 = 0x7669_6465_6f5f_696d;

/// The newest migration's version: what a database is at once `migrate` has run.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

/// Applies pending migrations and returns their versions; safe when several processes run
/// it at once.
pub async fn run(pool: &Pool) -> anyhow::Result<Vec<i32>> {
    run_until(pool, latest()).await
}

/// Applies pending migrations up to version `last` (a database as an older release left it,
/// for upgrade tests) and returns their versions.
pub async fn run_until(pool: &Pool, last: i32) -> anyhow::Result<Vec<i32>> {
    let mut client = pool.get().await.context("connecting to migrate")?;
    let tx = client
        .transaction()
        .await
        .context("starting the migration")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .context("creating schema_migrations")?;
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await
            .context("reading schema_migrations")?
            .is_some();
        if done || *version > last {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("migration {version} failed"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .with_context(|| format!("recording migration {version}"))?;
        applied.push(*version);
    }
    tx.commit().await.context("committing the migrations")?;
    Ok(applied)
}
