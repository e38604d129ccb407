//! `POST /api/v1/import/videos/{id}/retry`: a new job of a finished job's failed videos
//! (the cancelled ones too with `?includeCancelled=true`), with the same `systemName`,
//! webhook and context. It is an import like any other: the Idempotency-Key and the daily
//! limit apply, and the new job's status names the job it retries (`retryOf`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;
use video_import_shared::store::{jobs, projects};

use crate::auth::{Caller, WRITE};
use crate::error::ApiError;
use crate::import::{self, Submission};
use crate::model::{Accepted, ErrorBody};
use crate::state::AppState;

/// Query string of the retry route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct RetryQuery {
    /// Retry the videos a cancel failed as well (default false).
    include_cancelled: Option<bool>,
}

/// Creates a job of the failed videos of job `id`.
#[utoipa::path(
    post,
    path = "/api/v1/import/videos/{id}/retry",
    operation_id = "retryImport",
    params(
        ("id" = String, Path, description = "The finished job whose failed videos to import again"),
        RetryQuery,
        ("Idempotency-Key" = Option<String>, Header,
            description = "Same key within 24 hours returns the first retry job (max 255 characters)"),
    ),
    security(("bearer" = ["public-api:write"])),
    responses(
        (status = 200, description = "The new job, durable; its status shows retryOf", body = Accepted),
        (status = 400, description = "Bad Idempotency-Key or query", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Token lacks public-api:write", body = ErrorBody),
        (status = 404, description = "No such job in this project", body = ErrorBody),
        (status = 409, description = "The job is still running; retry once it finished (or cancel it)", body = ErrorBody),
        (status = 422, description = "The job has no failed videos to retry, or the Idempotency-Key was used for something else", body = ErrorBody),
        (status = 429, description = "Daily limit (an array) or rate limit (an object); see Retry-After", body = crate::model::TooManyRequests),
        (status = 503, description = "Database unavailable; nothing stored", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<RetryQuery>, QueryRejection>,
) -> Result<Json<Accepted>, ApiError> {
    caller.require(WRITE)?;
    let Query(query) = query?;
    let include_cancelled = query.include_cancelled.unwrap_or(false);
    let key = import::idempotency_key(&headers)?;
    let client = state.pool.get().await?;
    let source = jobs::retry_source(&client, caller.project_id, &id, include_cancelled)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("No import job with id {id:?}.")))?;
    if !source.finished {
        return Err(ApiError::Conflict(format!(
            "Job {id} is still running; retry its failed videos once it finished, or cancel it first."
        )));
    }
    if source.videos.is_empty() {
        let hint = if include_cancelled {
            ""
        } else {
            " (videos failed by a cancel are retried only with ?includeCancelled=true)"
        };
        return Err(ApiError::Unprocessable(format!(
            "Job {id} has no failed videos to retry{hint}."
        )));
    }
    let limits = projects::limits(&client, caller.project_id).await?;
    // The rules may have changed since: an s3:// video whose rule is gone is named now.
    crate::sources::check(&client, caller.project_id, &source.videos).await?;
    drop(client);
    // The project's schema may have changed since: the retry is checked as a new batch is.
    state.schemas.check(
        caller.project_id,
        limits.metadata_schema.as_ref(),
        &source.videos,
    )?;
    let asked = format!("retry {id} includeCancelled={include_cancelled}");
    let key = key.map(|key| (key, hex::encode(Sha256::digest(asked.as_bytes()))));
    let job = Submission {
        system_name: &source.system_name,
        webhook: source.webhook.as_deref(),
        context: source.context.as_deref(),
        videos: &source.videos,
        retry_of: Some(&id),
    };
    let accepted = import::accept(&state, &caller, &headers, key, limits.daily_limit, job).await?;
    Ok(Json(accepted))
}
