//! PostgreSQL connections: the pool, and a readiness ping. The
//! schema and every query live in [`crate::store`].

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime, Timeouts};

/// The connection pool every binary uses (deadpool-postgres's).
pub use deadpool_postgres::Pool;
use tokio_postgres::NoTls;

use crate::config::DatabaseSettings;
use crate::redact::Show;

/// The session settings of [`connect_key_lookups`]: every prepared statement is planned once,
/// at its first run, and that plan is kept (`force_generic_plan`); seq scans and hash and
/// merge joins are off, so the plan is index lookups in nested loops even when it is made
/// while the tables are nearly empty (a fresh install, a migration's first minute).
const KEY_LOOKUP_SESSION: &str = "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off \
     -c enable_hashjoin=off -c enable_mergejoin=off";

/// Builds the pool and checks one connection, so a wrong URL fails at start.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    build(settings, settings.pool_size, None).await
}

/// A pool of `size` sessions for statements that look rows up by key and run many times a
/// second (the worker's group commits and pending checks): planned once per session
/// instead of on every call. With PostgreSQL's default plan choice, a statement taking
/// arrays was planned again on most calls (a plan that knows the arrays' lengths looks
/// cheaper than one that does not), which was a third of those statements' time in the
/// database. Only for such statements: the settings would make a query that must read a
/// whole table slow (see [`KEY_LOOKUP_SESSION`]).
pub async fn connect_key_lookups(settings: &DatabaseSettings, size: usize) -> anyhow::Result<Pool> {
    build(settings, size, Some(KEY_LOOKUP_SESSION)).await
}

/// A pool of `size` connections to `settings.url`, with `session` added to the URL's own
/// session options; one connection is checked.
async fn build(
    settings: &DatabaseSettings,
    size: usize,
    session: Option<&str>,
) -> anyhow::Result<Pool> {
    let mut pg: tokio_postgres::Config = settings
        .url
        .parse()
        .with_context(|| format!("database.url {:?} is not a PostgreSQL URL", settings.url))?;
    if let Some(session) = session {
        let options = match pg.get_options() {
            Some(own) if !own.trim().is_empty() => format!("{own} {session}"),
            _ => session.to_string(),
        };
        pg.options(&options);
    }
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
        .max_size(size)
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
