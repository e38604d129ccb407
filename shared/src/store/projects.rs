//! Projects: their webhook secrets (with rotation), daily limits and metadata schemas.

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;

/// A project's limits, read for every import.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Videos the project may import in any 24 hours.
    pub daily_limit: Option<i32>,
    /// JSON Schema its videos' metadata must satisfy.
    pub metadata_schema: Option<Value>,
}

/// Creates a project; `false` when the handle is taken.
pub async fn create(
    client: &impl GenericClient,
    handle: &str,
    webhook_secret: &str,
    limits: &Limits,
) -> anyhow::Result<bool> {
    let inserted = client
        .execute(
            "INSERT INTO projects (handle, webhook_secret, daily_limit, metadata_schema)
             VALUES ($1, $2, $3, $4) ON CONFLICT (handle) DO NOTHING",
            &[
                &handle,
                &webhook_secret,
                &limits.daily_limit,
                &limits.metadata_schema,
            ],
        )
        .await
        .context("creating the project (did you run `video-import-api migrate`?)")?;
    Ok(inserted == 1)
}

/// Makes `secret` the signing secret; the old one keeps signing for `overlap_hours`. Returns
/// until when, or `None` when there is no such project.
pub async fn rotate_secret(
    client: &impl GenericClient,
    handle: &str,
    secret: &str,
    overlap_hours: i32,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    let row = client
        .query_opt(
            "UPDATE projects SET previous_secret = webhook_secret,
                 previous_secret_expires_at = now() + make_interval(hours => $3),
                 webhook_secret = $2
             WHERE handle = $1 RETURNING previous_secret_expires_at",
            &[&handle, &secret, &overlap_hours],
        )
        .await
        .context("rotating the webhook secret")?;
    Ok(row.map(|r| r.get(0)))
}

/// A change to a project's limits: `Some(None)` removes a value, `None` keeps it.
#[derive(Debug, Clone, Default)]
pub struct LimitsUpdate {
    pub daily_limit: Option<Option<i32>>,
    pub metadata_schema: Option<Option<Value>>,
}

/// Applies `update` and returns the daily limit and whether a schema is set, or `None` when
/// there is no such project.
pub async fn update_limits(
    client: &impl GenericClient,
    handle: &str,
    update: &LimitsUpdate,
) -> anyhow::Result<Option<(Option<i32>, bool)>> {
    let clear_limit = matches!(update.daily_limit, Some(None));
    let limit = update.daily_limit.flatten();
    let clear_schema = matches!(update.metadata_schema, Some(None));
    let schema = update.metadata_schema.clone().flatten();
    let row = client
        .query_opt(
            "UPDATE projects SET
                 daily_limit = CASE WHEN $2 THEN NULL ELSE COALESCE($3, daily_limit) END,
                 metadata_schema = CASE WHEN $4 THEN NULL ELSE COALESCE($5, metadata_schema) END
             WHERE handle = $1 RETURNING daily_limit, metadata_schema IS NOT NULL",
            &[&handle, &clear_limit, &limit, &clear_schema, &schema],
        )
        .await
        .context("updating the project")?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// The limits of the project `id`.
pub async fn limits(client: &impl GenericClient, id: i64) -> anyhow::Result<Limits> {
    let row = client
        .query_one(
            "SELECT daily_limit, metadata_schema FROM projects WHERE id = $1",
            &[&id],
        )
        .await
        .context("reading the project's limits")?;
    Ok(Limits {
        daily_limit: row.get(0),
        metadata_schema: row.get(1),
    })
}

/// The id of the project with this handle, if there is one.
pub async fn id_of(client: &impl GenericClient, handle: &str) -> anyhow::Result<Option<i64>> {
    let row = client
        .query_opt("SELECT id FROM projects WHERE handle = $1", &[&handle])
        .await
        .context("looking up the project")?;
    Ok(row.map(|r| r.get(0)))
}
