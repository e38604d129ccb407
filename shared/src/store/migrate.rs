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
    (13, include_str!("migrations/0013_retry_of.sql")),
    (14, include_str!("migrations/0014_checksums.sql")),
    (15, include_str!("migrations/0015_sources.sql")),
    (16, include_str!("migrations/0016_storage_verify.sql")),
    (17, include_str!("migrations/0017_retention.sql")),
    (18, include_str!("migrations/0018_packed_assets.sql")),
    (19, include_str!("migrations/0019_storage_sweep.sql")),
];

/// Migrations after which a binary that does not know them can no longer run (they drop or
/// change what it reads: the "contract" step of docs/upgrading.md). Recorded with each
/// applied migration, so that an older binary can tell a newer schema it still works with
/// (everything else: expand-only) from one it does not.
const BREAKS_OLDER: &[i32] = &[];

/// Any number so long as every process agrees on it: serialises concurrent `migrate` runs.
const MIGRATION_LOCK: i64 = 0x7669_6465_6f5f_696d;

/// Every migration's version, in the order they are applied (numbers may have gaps: each
/// feature branch takes its own).
pub fn versions() -> Vec<i32> {
    MIGRATIONS.iter().map(|(version, _)| *version).collect()
}

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
    tx.batch_execute(
        "ALTER TABLE schema_migrations
             ADD COLUMN IF NOT EXISTS breaks_older BOOLEAN NOT NULL DEFAULT false",
    )
    .await
    .context("adding schema_migrations.breaks_older")?;
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
            "INSERT INTO schema_migrations (version, breaks_older) VALUES ($1, $2)",
            &[version, &BREAKS_OLDER.contains(version)],
        )
        .await
        .with_context(|| format!("recording migration {version}"))?;
        applied.push(*version);
    }
    tx.commit().await.context("committing the migrations")?;
    Ok(applied)
}

/// Why a binary cannot run against the database's schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// `migrate` never ran on this database.
    #[error("the database has no schema yet: run `video-import-api migrate` first")]
    Missing,
    /// Migrations this binary needs are not applied.
    #[error(
        "the database schema is at version {found}, this binary needs {needs}: \
         run `video-import-api migrate` (it is safe while older binaries run)"
    )]
    Behind { found: i32, needs: i32 },
    /// A newer release applied a migration this binary no longer works with.
    #[error(
        "the database schema is at version {found}, newer than this binary knows ({knows}), \
         and migration {breaking} no longer works with it: run the newer release"
    )]
    Ahead {
        found: i32,
        knows: i32,
        breaking: i32,
    },
}

/// Checks that this binary can run against the database's schema: every migration it knows
/// is applied, and none applied since breaks it. A newer, expand-only schema is fine (a
/// rolling upgrade runs older binaries against it).
pub async fn check(pool: &Pool) -> anyhow::Result<()> {
    let client = pool.get().await.context("connecting to check the schema")?;
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .context("looking for schema_migrations")?
        .get(0);
    if !exists {
        return Err(SchemaError::Missing.into());
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0),
                    (SELECT min(version) FROM schema_migrations
                     WHERE version > $1 AND breaks_older IS TRUE)
             FROM schema_migrations",
            &[&latest()],
        )
        .await
        .context("reading schema_migrations")?;
    let found: i32 = row.get(0);
    let breaking: Option<i32> = row.get(1);
    let verdict = judge(found, latest(), breaking);
    if let Some(error) = verdict {
        return Err(error.into());
    }
    if found > latest() {
        tracing::info!(
            found,
            knows = latest(),
            "the database schema is newer than this binary and still works with it"
        );
    }
    Ok(())
}

/// The rule of [`check`]: `found` applied, this binary knows up to `knows`, `breaking` the
/// first applied migration beyond that which breaks older binaries.
fn judge(found: i32, knows: i32, breaking: Option<i32>) -> Option<SchemaError> {
    if found == 0 {
        Some(SchemaError::Missing)
    } else if found < knows {
        Some(SchemaError::Behind {
            found,
            needs: knows,
        })
    } else {
        breaking.map(|breaking| SchemaError::Ahead {
            found,
            knows,
            breaking,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_runs_on_its_schema_or_a_newer_expand_only_one() {
        assert_eq!(judge(12, 12, None), None);
        assert_eq!(judge(14, 12, None), None, "newer, expand-only");
        assert_eq!(judge(0, 12, None), Some(SchemaError::Missing));
        assert_eq!(
            judge(11, 12, None),
            Some(SchemaError::Behind {
                found: 11,
                needs: 12
            })
        );
        assert_eq!(
            judge(15, 12, Some(14)),
            Some(SchemaError::Ahead {
                found: 15,
                knows: 12,
                breaking: 14
            })
        );
    }
}
