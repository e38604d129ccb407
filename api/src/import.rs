//! `POST /api/v1/import/videos`: validate the batch and its metadata, then, in one
//! transaction, honour the Idempotency-Key, enforce the daily limit and commit the job, its
//! items and one outbox message per video.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use deadpool_postgres::Transaction;
use serde_json::Value;
use sha2::{Digest, Sha256};
use video_import_shared::messages::FetchVideo;
use video_import_shared::{ids, outbox, queue};

use crate::app::AppState;
use crate::auth::{Caller, WRITE};
use crate::error::ApiError;
use crate::model::{Accepted, ErrorBody, ImportRequest};
use crate::quota;
use crate::validate::{self, Batch};

/// Header that makes a retried POST return the first job instead of creating another.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Accepts a batch and answers `{"id": job id}` once it is durable.
#[utoipa::path(
    post,
    path = "/api/v1/import/videos",
    request_body = ImportRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Same key and body within 24 hours returns the first job (max 255 characters)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Accepted; the job is durable", body = Accepted),
        (status = 400, description = "Invalid batch or metadata; every offending field is named", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Token lacks public-api:write", body = ErrorBody),
        (status = 413, description = "Body larger than api.max_body_bytes", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused with another body", body = ErrorBody),
        (status = 429, description = "Daily limit (an array, as Livingdocs) or rate limit; see Retry-After", body = Vec<ErrorBody>),
        (status = 503, description = "Database unavailable; nothing stored", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Accepted>, ApiError> {
    caller.require(WRITE)?;
    let limit = state.settings.api.max_body_bytes;
    if body.len() > limit {
        return Err(ApiError::TooLarge(limit));
    }
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "Idempotency-Key",
                        "must be 1 to 255 visible ASCII characters",
                    )
                })?
                .to_string(),
        ),
        None => None,
    };
    let batch = validate::batch(&body, state.settings.api.max_batch_size)?;

    let mut client = state.pool.get().await?;
    let project = client
        .query_one(
            "SELECT daily_limit, metadata_schema FROM projects WHERE id = $1",
            &[&caller.project_id],
        )
        .await?;
    let daily_limit: Option<i32> = project.get(0);
    let schema: Option<Value> = project.get(1);
    state
        .schemas
        .check(caller.project_id, schema.as_ref(), &batch.videos)?;

    let job_id = ids::random_id(12);
    let tx = client.transaction().await?;
    if let Some(key) = &idempotency_key {
        let hash = hex::encode(Sha256::digest(&body));
        if let Some(first) = claim_key(&tx, caller.project_id, key, &hash, &job_id).await? {
            // The transaction ends unused: the first request's job stands.
            return Ok(Json(Accepted { id: first }));
        }
    }
    let total = batch.videos.len() as i32;
    // Without a configured limit no counting query runs.
    if let Some(limit) = daily_limit {
        quota::check_daily_limit(&tx, caller.project_id, limit, total).await?;
    }
    insert_job(&tx, caller.project_id, &job_id, &batch).await?;
    tx.commit().await?;

    state.relay.wake();
    state.metrics.jobs_accepted.inc();
    state.metrics.videos_accepted.inc_by(total as u64);
    tracing::info!(job = %job_id, videos = total, "import job accepted");
    Ok(Json(Accepted { id: job_id }))
}

/// Takes `key` for `job_id`, or returns the job of an earlier request with the same key and
/// body. A concurrent request with the same key waits here for the first to commit.
async fn claim_key(
    tx: &Transaction<'_>,
    project_id: i64,
    key: &str,
    hash: &str,
    job_id: &str,
) -> Result<Option<String>, ApiError> {
    let claimed = tx
        .execute(
            "INSERT INTO idempotency_keys (project_id, key, request_hash, job_id)
             VALUES ($1, $2, $3, $4) ON CONFLICT (project_id, key) DO NOTHING",
            &[&project_id, &key, &hash, &job_id],
        )
        .await?;
    if claimed == 1 {
        return Ok(None);
    }
    let row = tx
        .query_one(
            "SELECT request_hash, job_id, created_at > now() - interval '24 hours'
             FROM idempotency_keys WHERE project_id = $1 AND key = $2 FOR UPDATE",
            &[&project_id, &key],
        )
        .await?;
    if !row.get::<_, bool>(2) {
        // Older than 24 hours: the key is free again.
        tx.execute(
            "UPDATE idempotency_keys SET request_hash = $3, job_id = $4, created_at = now()
             WHERE project_id = $1 AND key = $2",
            &[&project_id, &key, &hash, &job_id],
        )
        .await?;
        return Ok(None);
    }
    if row.get::<_, String>(0) != hash {
        return Err(ApiError::IdempotencyMismatch);
    }
    Ok(Some(row.get(1)))
}

async fn insert_job(
    tx: &Transaction<'_>,
    project_id: i64,
    job_id: &str,
    batch: &Batch,
) -> Result<(), ApiError> {
    let total = batch.videos.len() as i32;
    tx.execute(
        "INSERT INTO jobs (id, project_id, system_name, webhook, context, total, pending)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
        &[
            &job_id,
            &project_id,
            &batch.system_name,
            &batch.webhook,
            &batch.context,
            &total,
        ],
    )
    .await?;
    let idx: Vec<i32> = (0..total).collect();
    let external_ids: Vec<&str> = batch
        .videos
        .iter()
        .map(|v| v.external_id.as_str())
        .collect();
    let urls: Vec<&str> = batch.videos.iter().map(|v| v.url.as_str()).collect();
    let file_names: Vec<&str> = batch.videos.iter().map(|v| v.file_name.as_str()).collect();
    let metadata: Vec<&Value> = batch.videos.iter().map(|v| &v.metadata).collect();
    tx.execute(
        "INSERT INTO job_items (job_id, idx, external_id, url, file_name, metadata)
         SELECT $1, * FROM unnest($2::int4[], $3::text[], $4::text[], $5::text[], $6::jsonb[])",
        &[&job_id, &idx, &external_ids, &urls, &file_names, &metadata],
    )
    .await?;
    let messages: Vec<FetchVideo> = idx
        .iter()
        .map(|&i| FetchVideo {
            job_id: job_id.to_string(),
            idx: i,
            attempt: 0,
        })
        .collect();
    outbox::enqueue(tx, queue::FETCH, &messages).await?;
    Ok(())
}
