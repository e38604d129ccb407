//! Reading jobs: one job's status in the Livingdocs shape (with every video's outcome and
//! the webhook's delivery state), and the project's jobs page by page.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio_postgres::Row;
use utoipa::IntoParams;

use crate::app::AppState;
use crate::auth::{Caller, WRITE};
use crate::error::ApiError;
use crate::model::{
    JobList, JobState, JobStatus, JobSummary, Overview, VideoRef, VideoState, VideoStatus,
    WebhookStatus,
};

/// Query string of the status route.
#[derive(Debug, Deserialize, IntoParams)]
pub struct StatusQuery {
    /// The job id that `POST /api/v1/import/videos` answered.
    #[param(required = true)]
    id: Option<String>,
}

const JOB_COLUMNS: &str = "j.id, j.state, j.system_name, j.total, j.pending, j.imported,
    j.skipped, j.failed, j.started_at, j.finished_at";

fn summary(row: &Row) -> JobSummary {
    let finished_at: Option<DateTime<Utc>> = row.get(9);
    JobSummary {
        id: row.get(0),
        finished: finished_at.is_some(),
        state: JobState::from_db(row.get(1)),
        system_name: row.get(2),
        started_at: row.get(8),
        finished_at,
        overview: Overview {
            total: row.get(3),
            pending: row.get(4),
            imported: row.get(5),
            skipped: row.get(6),
            failed: row.get(7),
        },
    }
}

/// One job's status.
#[utoipa::path(
    get,
    path = "/api/v1/import/videos/status",
    params(StatusQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        (status = 400, description = "No id given", body = crate::model::ErrorBody),
        (status = 401, description = "No or bad token", body = crate::model::ErrorBody),
        (status = 403, description = "Token lacks public-api:write", body = crate::model::ErrorBody),
        (status = 404, description = "No such job in this project", body = crate::model::ErrorBody),
        (status = 429, description = "Rate limited", body = crate::model::ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<JobStatus>, ApiError> {
    caller.require(WRITE)?;
    let Query(query) = query?;
    let id = query
        .id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::invalid("id", "is required: pass ?id=<job id>"))?;
    let client = state.pool.get().await?;
    let Some(job) = client
        .query_opt(
            &format!(
                "SELECT {JOB_COLUMNS}, d.state, d.attempts, d.last_error, d.delivered_at
                 FROM jobs j LEFT JOIN webhook_deliveries d ON d.job_id = j.id
                 WHERE j.id = $1 AND j.project_id = $2"
            ),
            &[&id, &caller.project_id],
        )
        .await?
    else {
        return Err(ApiError::NotFound(format!("No import job with id {id:?}.")));
    };
    let items = client
        .query(
            "SELECT i.state, i.reason, i.external_id, i.url, i.media_id, m.mime_type, m.asset_size,
                    i.last_error, m.duration_seconds, m.width, m.height, m.video_codec
             FROM job_items i LEFT JOIN media_entries m ON m.id = i.media_id
             WHERE i.job_id = $1 ORDER BY i.idx",
            &[&id],
        )
        .await?;
    let summary = summary(&job);
    let videos = items
        .iter()
        .map(|row| {
            let reason: Option<String> = row.get(1);
            VideoStatus {
                state: VideoState::from_db(row.get(0)),
                system_name: summary.system_name.clone(),
                external_id: row.get(2),
                // A pending video whose last try failed says why it is taking long.
                last_error: if reason.is_none() { row.get(7) } else { None },
                reason,
                video: row.get::<_, Option<String>>(4).map(|media_id| VideoRef {
                    media_id,
                    original_url: row.get(3),
                    mime_type: row.get(5),
                    size: row.get(6),
                    duration: row.get(8),
                    width: row.get(9),
                    height: row.get(10),
                    codec: row.get(11),
                }),
            }
        })
        .collect();
    let webhook = job
        .get::<_, Option<String>>(10)
        .map(|webhook_state| WebhookStatus {
            state: webhook_state,
            attempts: job.get(11),
            last_error: job.get(12),
            delivered_at: job.get(13),
        });
    Ok(Json(JobStatus {
        id: summary.id,
        finished: summary.finished,
        state: summary.state,
        system_name: summary.system_name,
        started_at: summary.started_at,
        finished_at: summary.finished_at,
        overview: summary.overview,
        videos,
        webhook,
    }))
}

/// Query string of the job list.
#[derive(Debug, Deserialize, IntoParams)]
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
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of jobs", body = JobList),
        (status = 400, description = "Bad limit or cursor", body = crate::model::ErrorBody),
        (status = 401, description = "No or bad token", body = crate::model::ErrorBody),
        (status = 403, description = "Token lacks public-api:write", body = crate::model::ErrorBody),
        (status = 429, description = "Rate limited", body = crate::model::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
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
    let (after_time, after_id) = after.unzip();
    let state_filter = query.state.map(JobState::as_str);
    let client = state.pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs j
                 WHERE j.project_id = $1
                   AND ($2::text IS NULL OR j.state = $2)
                   AND ($3::text IS NULL OR j.system_name = $3)
                   AND ($4::timestamptz IS NULL OR (j.started_at, j.id) < ($4, $5))
                 ORDER BY j.started_at DESC, j.id DESC LIMIT $6"
            ),
            &[
                &caller.project_id,
                &state_filter,
                &query.system_name,
                &after_time,
                &after_id,
                &(limit + 1),
            ],
        )
        .await?;
    let mut jobs: Vec<JobSummary> = rows.iter().map(summary).collect();
    let next_cursor = if jobs.len() as i64 > limit {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| encode_cursor(j.started_at, &j.id))
    } else {
        None
    };
    Ok(Json(JobList { jobs, next_cursor }))
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
