//! `GET /api/v1/import/videos/status?id=`: the job in the Livingdocs shape, with an overview,
//! every video's outcome and the webhook's delivery state.

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::{Caller, WRITE};
use crate::error::ApiError;

/// Query string of the status route.
#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    id: Option<String>,
}

/// Answers the job's status.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<StatusQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(WRITE)?;
    let id = query
        .id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::invalid("id", "is required: pass ?id=<job id>"))?;
    let client = state.pool.get().await?;
    let Some(job) = client
        .query_opt(
            "SELECT j.state, j.system_name, j.total, j.pending, j.imported, j.skipped, j.failed,
                    j.started_at, j.finished_at, d.state, d.attempts, d.last_error, d.delivered_at
             FROM jobs j LEFT JOIN webhook_deliveries d ON d.job_id = j.id
             WHERE j.id = $1 AND j.project_id = $2",
            &[&id, &caller.project_id],
        )
        .await?
    else {
        return Err(ApiError::NotFound(format!("No import job with id {id:?}.")));
    };
    let state_name: String = job.get(0);
    let finished_at: Option<DateTime<Utc>> = job.get(8);
    let items = client
        .query(
            "SELECT i.state, i.reason, i.external_id, i.url, i.media_id, m.mime_type, m.asset_size,
                    i.last_error, m.duration_seconds, m.width, m.height, m.video_codec
             FROM job_items i LEFT JOIN media_entries m ON m.id = i.media_id
             WHERE i.job_id = $1 ORDER BY i.idx",
            &[&id],
        )
        .await?;
    let system_name: String = job.get(1);
    let videos: Vec<Value> = items
        .iter()
        .map(|row| {
            let mut video = json!({
                "state": row.get::<_, String>(0),
                "systemName": system_name,
                "externalId": row.get::<_, String>(2),
            });
            if let Some(reason) = row.get::<_, Option<String>>(1) {
                video["reason"] = json!(reason);
            } else if let Some(last_error) = row.get::<_, Option<String>>(7) {
                // Still pending, but a try failed: say why it is taking long.
                video["lastError"] = json!(last_error);
            }
            if let Some(media_id) = row.get::<_, Option<String>>(4) {
                video["video"] = json!({
                    "mediaId": media_id,
                    "originalUrl": row.get::<_, String>(3),
                    "mimeType": row.get::<_, Option<String>>(5),
                    "size": row.get::<_, Option<i64>>(6),
                    "duration": row.get::<_, Option<f64>>(8),
                    "width": row.get::<_, Option<i32>>(9),
                    "height": row.get::<_, Option<i32>>(10),
                    "codec": row.get::<_, Option<String>>(11),
                });
            }
            video
        })
        .collect();
    let mut body = json!({
        "id": id,
        "finished": finished_at.is_some(),
        "state": state_name,
        "systemName": system_name,
        "startedAt": job.get::<_, DateTime<Utc>>(7),
        "finishedAt": finished_at,
        "overview": {
            "total": job.get::<_, i32>(2),
            "pending": job.get::<_, i32>(3),
            "imported": job.get::<_, i32>(4),
            "skipped": job.get::<_, i32>(5),
            "failed": job.get::<_, i32>(6),
        },
        "videos": videos,
    });
    if let Some(webhook_state) = job.get::<_, Option<String>>(9) {
        body["webhook"] = json!({
            "state": webhook_state,
            "attempts": job.get::<_, i32>(10),
            "lastError": job.get::<_, Option<String>>(11),
            "deliveredAt": job.get::<_, Option<DateTime<Utc>>>(12),
        });
    }
    Ok(Json(body))
}
