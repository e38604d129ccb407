//! Reading jobs: one job's status in the Livingdocs shape (with every video's outcome and
//! the webhook's delivery state), and the project's jobs page by page.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;
use video_import_shared::redact::{self, Show};
use video_import_shared::store::jobs::{self, JobRecord};
use video_import_shared::store::{items, JobState};

use crate::auth::{Caller, WRITE};
use crate::conditional::ETag;
use crate::error::{ApiError, PrunedAsk};
use crate::model::{
    ChecksumInput, JobList, JobStatus, JobSummary, Overview, VideoOutcome, VideoRef, VideoStatus,
    WebhookStatus,
};
use crate::state::AppState;

/// Query string of the status route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// The job id that `POST /api/v1/import/videos` answered.
    #[param(required = true)]
    id: Option<String>,
}

/// A job's row as the API shows it.
pub fn summary(job: JobRecord) -> JobSummary {
    JobSummary {
        id: job.id,
        finished: job.finished_at.is_some(),
        state: job.state,
        system_name: job.system_name,
        started_at: job.started_at,
        finished_at: job.finished_at,
        cancelled_at: job.cancelled_at,
        pruned_at: job.pruned_at,
        overview: Overview {
            total: job.total,
            pending: job.pending,
            imported: job.imported,
            skipped: job.skipped,
            failed: job.failed,
        },
    }
}

/// One job's status.
#[utoipa::path(
    get,
    path = "/api/v1/import/videos/status",
    operation_id = "getImportStatus",
    params(StatusQuery, ("If-None-Match" = Option<String>, Header,
        description = "The ETag of an earlier answer: 304 without a body while the job is unchanged")),
    security(("bearer" = ["public-api:write"])),
    responses(
        (status = 200, description = "The job (ETag header; gzip with Accept-Encoding: gzip)", body = JobStatus,
            headers(("ETag" = String, description = "Weak tag of this answer, for If-None-Match"))),
        (status = 304, description = "Unchanged since the ETag sent in If-None-Match",
            headers(("ETag" = String, description = "The same tag"))),
        (status = 400, description = "No id given", body = crate::model::ErrorBody),
        (status = 401, description = "No or bad token", body = crate::model::ErrorBody),
        (status = 403, description = "Token lacks public-api:write", body = crate::model::ErrorBody),
        (status = 404, description = "No such job in this project", body = crate::model::ErrorBody),
        (status = 410, description = "The job finished before the retention period (retention.finished_jobs_secs) and its videos' details were removed: error_details holds its summary (finishedAt, prunedAt, overview)", body = crate::model::PrunedError),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::model::ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(WRITE)?;
    let Query(query) = query?;
    let id = query
        .id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::invalid("id", "is required: pass ?id=<job id>"))?;
    let not_found = || ApiError::NotFound(format!("No import job with id {id:?}."));
    // Read before the status: a change in between makes the next poll a 200, never a
    // wrong 304. Polls of one job that arrive together share one read, which starts after
    // they arrived (a client sees its own change at once).
    let project_id = caller.project_id;
    let shared = state
        .fingerprints
        .run((project_id, id.clone()), || {
            let (pool, id) = (state.pool.clone(), id.clone());
            async move {
                let client = pool.get().await.ok()?;
                jobs::fingerprint(&client, project_id, &id).await.ok()
            }
        })
        .await;
    let fingerprint = match shared {
        Some(fingerprint) => fingerprint,
        // The shared read failed: read again here, for an error that says why.
        None => jobs::fingerprint(&state.pool.get().await?, project_id, &id).await?,
    };
    let etag = fingerprint.map(|f| ETag::weak(&f)).ok_or_else(not_found)?;
    if etag.is_fresh_for(&headers) {
        return Ok(etag.not_modified());
    }
    let client = state.pool.get().await?;
    let Some((job, delivery)) = jobs::find(&client, caller.project_id, &id).await? else {
        return Err(not_found());
    };
    let items = items::of_job(&client, &id).await?;
    // Fewer items than videos: the pruner is removing them (it marks the job last).
    if job.pruned(items.len()) {
        return Err(ApiError::Pruned {
            job: Box::new(summary(job)),
            asked: PrunedAsk::Status,
        });
    }
    let retry_of = job.retry_of.clone();
    let summary = summary(job);
    let api = &state.settings.api;
    let videos = items
        .into_iter()
        .map(|item| VideoStatus {
            status: VideoOutcome::from(item.state),
            title: item.file_name,
            state: item.state,
            system_name: summary.system_name.clone(),
            external_id: item.external_id,
            // A pending video whose last try failed says why it is taking long.
            last_error: if item.reason.is_none() {
                item.last_error
            } else {
                None
            },
            reason: item.reason,
            video: item.media_id.map(|media_id| VideoRef {
                url: crate::media::asset_url(api, &media_id),
                media_id,
                original_url: redact::url(&item.url, Show::WithoutCredentials),
                mime_type: item.mime_type,
                size: item.size,
                duration: item.duration_seconds,
                width: item.width,
                height: item.height,
                codec: item.codec,
                sha256: item.sha256,
                md5: item.md5,
                verified: (!item.checksum.is_empty()).then(|| ChecksumInput {
                    sha256: item.checksum.sha256.clone(),
                    md5: item.checksum.md5.clone(),
                }),
            }),
        })
        .collect();
    let webhook = delivery.map(|d| WebhookStatus {
        state: d.state,
        attempts: d.attempts,
        last_error: d.last_error,
        delivered_at: d.delivered_at,
    });
    let status = JobStatus {
        summary,
        retry_of,
        videos,
        webhook,
    };
    Ok(etag.tag(Json(status).into_response()))
}

/// Query string of the job list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// Only jobs in this state.
    state: Option<JobState>,
    /// Only jobs of this system.
    system_name: Option<String>,
    /// Page size, 1 to 200 (default 50).
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// The project's jobs, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/import/videos",
    operation_id = "listImports",
    params(ListQuery, ("If-None-Match" = Option<String>, Header,
        description = "The ETag of an earlier answer: 304 without a body while the page is unchanged")),
    security(("bearer" = ["public-api:write"])),
    responses(
        (status = 200, description = "A page of jobs (ETag header; gzip with Accept-Encoding: gzip)", body = JobList,
            headers(("ETag" = String, description = "Weak tag of this page, for If-None-Match"))),
        (status = 304, description = "The page is unchanged since the ETag sent in If-None-Match",
            headers(("ETag" = String, description = "The same tag"))),
        (status = 400, description = "Bad limit or cursor", body = crate::model::ErrorBody),
        (status = 401, description = "No or bad token", body = crate::model::ErrorBody),
        (status = 403, description = "Token lacks public-api:write", body = crate::model::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::model::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(WRITE)?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be from 1 to 200"));
    }
    let after = match &query.cursor {
        Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| {
            ApiError::invalid(
                "cursor",
                "is not a cursor this API gave out; start without one",
            )
        })?),
        None => None,
    };
    let client = state.pool.get().await?;
    let filter = jobs::ListFilter {
        state: query.state,
        system_name: query.system_name,
        before: after,
        limit: limit + 1,
    };
    let records = jobs::list(&client, caller.project_id, &filter).await?;
    let mut jobs: Vec<JobSummary> = records.into_iter().map(summary).collect();
    let next_cursor = if jobs.len() as i64 > limit {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| encode_cursor(j.started_at, &j.id))
    } else {
        None
    };
    // A page is a few hundred rows without their videos: tagged by its bytes, so a 304
    // saves the transfer (and the client's parsing), not the query.
    let body = serde_json::to_vec(&JobList { jobs, next_cursor })
        .map_err(|e| ApiError::Internal(e.into()))?;
    let etag = ETag::weak(&hex::encode(&Sha256::digest(&body)[..16]));
    if etag.is_fresh_for(&headers) {
        return Ok(etag.not_modified());
    }
    let response = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    Ok(etag.tag(response))
}

/// Opaque cursor: the last job's start time (microseconds) and id.
fn encode_cursor(started_at: DateTime<Utc>, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{id}", started_at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, String)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (micros, id) = text.split_once(':')?;
    let time = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    Some((time, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let t = DateTime::from_timestamp_micros(1_795_754_953_123_456).unwrap();
        let c = encode_cursor(t, "abc123");
        assert_eq!(decode_cursor(&c), Some((t, "abc123".to_string())));
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(decode_cursor(""), None);
    }
}
