//! `POST /api/v1/import/videos/{id}/webhook`: send a finished job's webhook again, with the
//! same `webhook-id`, whether the earlier delivery succeeded or failed.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use video_import_shared::messages::DeliverWebhook;
use video_import_shared::{outbox, queue};

use crate::app::AppState;
use crate::auth::{Caller, WRITE};
use crate::error::ApiError;
use crate::model::{Redelivery, RedeliveryState};

/// Queues a new round of delivery attempts; answers 202.
#[utoipa::path(
    post,
    path = "/api/v1/import/videos/{id}/webhook",
    params(("id" = String, Path, description = "Job id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Redelivery queued", body = Redelivery),
        (status = 401, description = "No or bad token", body = crate::model::ErrorBody),
        (status = 403, description = "Token lacks public-api:write", body = crate::model::ErrorBody),
        (status = 404, description = "No such job in this project", body = crate::model::ErrorBody),
        (status = 409, description = "Job still running, or without webhook", body = crate::model::ErrorBody),
        (status = 429, description = "Rate limited", body = crate::model::ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Redelivery>), ApiError> {
    caller.require(WRITE)?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let job = tx
        .query_opt(
            "SELECT finished_at IS NOT NULL, webhook IS NOT NULL FROM jobs
             WHERE id = $1 AND project_id = $2",
            &[&id, &caller.project_id],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("No import job with id {id:?}.")))?;
    if !job.get::<_, bool>(1) {
        return Err(ApiError::Conflict(
            "This job has no webhook; pass \"webhook\" when you import.".into(),
        ));
    }
    if !job.get::<_, bool>(0) {
        return Err(ApiError::Conflict(
            "This job is still running; its webhook is sent when it finishes.".into(),
        ));
    }
    // Lock the delivery so concurrent redelivery requests queue exactly one round each.
    let row = tx
        .query_one(
            "UPDATE webhook_deliveries SET state = 'pending', round_start = attempts
             WHERE job_id = $1 RETURNING attempts, webhook_id, url",
            &[&id],
        )
        .await?;
    let attempts: i32 = row.get(0);
    let message = DeliverWebhook {
        job_id: id.clone(),
        attempt: attempts as u32 + 1,
        waited: 0,
        url: Some(row.get(2)),
    };
    outbox::enqueue(&tx, queue::WEBHOOK, &[message]).await?;
    tx.commit().await?;
    state.relay.wake();
    Ok((
        StatusCode::ACCEPTED,
        Json(Redelivery {
            id,
            webhook: RedeliveryState {
                state: "pending".into(),
                webhook_id: row.get(1),
                attempts,
            },
        }),
    ))
}
