//! `POST /api/v1/import/videos`: validate, then commit the job, its items and one outbox
//! message per video in one transaction.

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use video_import_shared::messages::FetchVideo;
use video_import_shared::{ids, outbox, queue};

use crate::app::AppState;
use crate::auth::{Caller, WRITE};
use crate::error::ApiError;
use crate::validate;

/// Accepts a batch and answers `{"id": job id}` once it is durable.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    caller.require(WRITE)?;
    let limit = state.settings.api.max_body_bytes;
    if body.len() > limit {
        return Err(ApiError::TooLarge(limit));
    }
    let batch = validate::batch(&body, state.settings.api.max_batch_size)?;
    let job_id = ids::random_id(12);
    let total = batch.videos.len() as i32;

    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO jobs (id, project_id, system_name, webhook, context, total, pending)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
        &[
            &job_id,
            &caller.project_id,
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
            job_id: job_id.clone(),
            idx: i,
            attempt: 0,
        })
        .collect();
    outbox::enqueue(&tx, queue::FETCH, &messages).await?;
    tx.commit().await?;

    state.relay.wake();
    state.metrics.jobs_accepted.inc();
    state.metrics.videos_accepted.inc_by(total as u64);
    tracing::info!(job = %job_id, videos = total, "import job accepted");
    Ok(Json(json!({ "id": job_id })))
}
