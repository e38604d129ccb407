//! PostgreSQL connections: the pool, and a readiness ping. The
//! schema and every query live in [`crate::store`].

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;

use crate::config::DatabaseSettings;
use crate::redact::Show;

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
    let wait = settings.pool_timeout;
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
    let shown = crate::redact::url(&settings.url, Show::WithoutCredentials);
    if let Err(error) = pool.get().await {
        if let deadpool_postgres::PoolError::Backend(e) = &error {
            if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) {
                anyhow::bail!(
                    "the database of database.url {shown:?} does not exist: create it first \
                     (e.g. `createdb NAME`), then run `video-import-api migrate`"
                );
            }
        }
        return Err(anyhow::Error::new(error).context(format!(
            "cannot connect to PostgreSQL at database.url {shown:?}; is it running?"
        )));
    }
    Ok(pool)
}

/// [`connect`], then checks that the schema is one this binary runs against
/// (`store::migrate::check`): for everything but `migrate` itself.
pub async fn connect_migrated(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    let pool = connect(settings).await?;
    crate::store::migrate::check(&pool).await?;
    Ok(pool)
}

/// Checks that the database answers; used by `/readyz`.
pub async fn ping(pool: &Pool) -> bool {
    match pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}
