//! `POST /api/v1/import/videos/{id}/cancel`: stop a job. Its unfinished videos fail with
//! reason `cancelled` (workers then drop their queued messages without downloading), the job
//! finishes and its webhook is sent once. Cancelling again, or a finished job, changes
//! nothing.

use anyhow::Context;
use axum::extract::{Path, State};
use axum::Json;
use video_import_shared::outbox;
use video_import_shared::store::jobs;

use crate::auth::{Caller, WRITE};
use crate::error::ApiError;
use crate::model::Cancelled;
use crate::state::AppState;
use crate::status::summary;

/// Cancels the job; answers it with the number of videos that were cancelled.
#[utoipa::path(
    post,
    path = "/api/v1/import/videos/{id}/cancel",
    operation_id = "cancelImport",
    params(("id" = String, Path, description = "Job id")),
    security(("bearer" = ["public-api:write"])),
    responses(
        (status = 200, description = "The job is finished; `cancelled` videos were still pending", body = Cancelled),
        (status = 401, description = "No or bad token", body = crate::model::ErrorBody),
        (status = 403, description = "Token lacks public-api:write", body = crate::model::ErrorBody),
        (status = 404, description = "No such job in this project", body = crate::model::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::model::ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Cancelled>, ApiError> {
    caller.require(WRITE)?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await.context("starting the cancel")?;
    let Some(cancellation) = jobs::cancel(&tx, caller.project_id, &id).await? else {
        return Err(ApiError::NotFound(format!("No import job with id {id:?}.")));
    };
    let rounds: Vec<_> = cancellation.webhook.iter().cloned().collect();
    outbox::announce(&tx, &rounds).await?;
    tx.commit().await.context("committing the cancel")?;
    if cancellation.cancelled > 0 {
        // The job just finished: publish its webhook message now.
        state.relay.wake();
        tracing::info!(job = %id, videos = cancellation.cancelled, "import job cancelled");
    }
    Ok(Json(Cancelled {
        job: summary(cancellation.job),
        cancelled: cancellation.cancelled,
    }))
}
