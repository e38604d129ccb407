//! PostgreSQL: the connection pool and the schema migrations.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;

use crate::config::DatabaseSettings;

/// Embedded migrations, applied in order; append, never edit.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (
        2,
        include_str!("../migrations/0002_webhook_rotation_redelivery.sql"),
    ),
    (3, include_str!("../migrations/0003_asset_details.sql")),
    (4, include_str!("../migrations/0004_idempotency.sql")),
    (5, include_str!("../migrations/0005_fillfactor.sql")),
];

/// Any number so long as every process agrees on it: serialises concurrent `migrate` runs.
const MIGRATION_LOCK: i64 = 0x7669_6465_6f5f_696d;

/// Builds the pool and checks one connection, so a wrong URL fails at start.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    let pg: tokio_postgres::Config = settings
        .url
        .parse()
        .with_context(|| format!("database.url {:?} is not a PostgreSQL URL", settings.url))?;
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            // Fast: a round trip per checkout costs more than it saves; a connection the
            // server closed fails its query, and every caller retries database steps.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let wait = Duration::from_secs(settings.pool_timeout_secs);
    let pool = Pool::builder(manager)
        .max_size(settings.pool_size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(wait),
            create: Some(wait),
            recycle: Some(wait),
        })
        .build()
        .context("building the database pool")?;
    let _check = pool.get().await.with_context(|| {
        format!(
            "cannot connect to PostgreSQL at database.url {:?}; is it running?",
            redact(&settings.url)
        )
    })?;
    Ok(pool)
}

/// Applies pending migrations; safe when several processes run it at once.
pub async fn migrate(pool: &Pool) -> anyhow::Result<Vec<i32>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("migration {version} failed"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// Checks that the database answers; used by `/readyz`.
pub async fn ping(pool: &Pool) -> bool {
    match pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}

/// Hides the password of a connection URL in messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}
