//! `POST /api/v1/import/videos/{id}/webhook`: send a finished job's webhook again, with the
//! same `webhook-id`, whether the earlier delivery succeeded or failed.

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use deadpool_postgres::GenericClient;
use video_import_shared::outbox;
use video_import_shared::store::{jobs, webhooks, WebhookState};

use crate::auth::{Caller, WRITE};
use crate::error::{ApiError, PrunedAsk};
use crate::model::{Redelivery, RedeliveryState};
use crate::state::AppState;

/// Queues a new round of delivery attempts; answers 202.
#[utoipa::path(
    post,
    path = "/api/v1/import/videos/{id}/webhook",
    operation_id = "redeliverWebhook",
    params(("id" = String, Path, description = "Job id")),
    security(("bearer" = ["public-api:write"])),
    responses(
        (status = 202, description = "Redelivery queued", body = Redelivery),
        (status = 401, description = "No or bad token", body = crate::model::ErrorBody),
        (status = 403, description = "Token lacks public-api:write", body = crate::model::ErrorBody),
        (status = 404, description = "No such job in this project", body = crate::model::ErrorBody),
        (status = 409, description = "Job still running, or without webhook", body = crate::model::ErrorBody),
        (status = 410, description = "The job was pruned after the retention period: its webhook delivery is gone (error_details holds its summary)", body = crate::model::PrunedError),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::model::ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Redelivery>), ApiError> {
    caller.require(WRITE)?;
    let mut client = state.pool.get().await?;
    let tx = client
        .transaction()
        .await
        .context("starting the redelivery")?;
    let job = jobs::finish_of(&tx, caller.project_id, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("No import job with id {id:?}.")))?;
    if job.pruned {
        return Err(pruned(&tx, caller.project_id, &id).await);
    }
    if !job.has_webhook {
        return Err(ApiError::Conflict(
            "This job has no webhook; pass \"webhook\" when you import.".into(),
        ));
    }
    if !job.finished {
        return Err(ApiError::Conflict(
            "This job is still running; its webhook is sent when it finishes.".into(),
        ));
    }
    let Some(redelivery) = webhooks::redeliver(&tx, &id).await? else {
        // Pruned since it was read: the delivery went with its videos.
        return Err(pruned(&tx, caller.project_id, &id).await);
    };
    outbox::announce(&tx, std::slice::from_ref(&redelivery.started)).await?;
    tx.commit().await.context("committing the redelivery")?;
    state.relay.wake();
    Ok((
        StatusCode::ACCEPTED,
        Json(Redelivery {
            id,
            webhook: RedeliveryState {
                state: WebhookState::Pending,
                webhook_id: redelivery.webhook_id,
                attempts: redelivery.attempts,
            },
        }),
    ))
}

/// The 410 for a job whose delivery retention removed.
async fn pruned(client: &impl GenericClient, project_id: i64, id: &str) -> ApiError {
    match jobs::find(client, project_id, id).await {
        Ok(Some((job, _))) => ApiError::Pruned {
            job: Box::new(crate::status::summary(job)),
            asked: PrunedAsk::Webhook,
        },
        Ok(None) => ApiError::NotFound(format!("No import job with id {id:?}.")),
        Err(e) => ApiError::Internal(e),
    }
}
