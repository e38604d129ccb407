//! Media-library reads: one entry by id, or entries by `systemName` and `externalId`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use tokio_postgres::Row;
use utoipa::IntoParams;

use crate::app::AppState;
use crate::auth::{Caller, READ};
use crate::error::ApiError;
use crate::model::{Asset, MediaEntry};

const COLUMNS: &str = "id, version, system_name, external_id, file_name, metadata, asset_key,
    asset_size, mime_type, sha256, original_url, created_at, updated_at, duration_seconds, width,
    height, video_codec";

/// One entry.
#[utoipa::path(
    get,
    path = "/api/v1/mediaLibrary/{id}",
    params(("id" = String, Path, description = "Media id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The entry", body = MediaEntry),
        (status = 401, description = "No or bad token", body = crate::model::ErrorBody),
        (status = 403, description = "Token lacks public-api:read", body = crate::model::ErrorBody),
        (status = 404, description = "No such entry in this project", body = crate::model::ErrorBody),
        (status = 429, description = "Rate limited", body = crate::model::ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<MediaEntry>, ApiError> {
    caller.require(READ)?;
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM media_entries WHERE id = $1 AND project_id = $2"),
            &[&id, &caller.project_id],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("No media-library entry with id {id:?}.")))?;
    Ok(Json(entry(&row)))
}

/// Query string of the lookup route.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct FindQuery {
    #[param(required = true)]
    system_name: Option<String>,
    #[param(required = true)]
    external_id: Option<String>,
}

/// The entries with this `systemName` and `externalId` (zero or one).
#[utoipa::path(
    get,
    path = "/api/v1/mediaLibrary",
    params(FindQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Matching entries", body = Vec<MediaEntry>),
        (status = 400, description = "Missing parameter", body = crate::model::ErrorBody),
        (status = 401, description = "No or bad token", body = crate::model::ErrorBody),
        (status = 403, description = "Token lacks public-api:read", body = crate::model::ErrorBody),
        (status = 429, description = "Rate limited", body = crate::model::ErrorBody),
    )
)]
pub async fn find(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<FindQuery>, QueryRejection>,
) -> Result<Json<Vec<MediaEntry>>, ApiError> {
    caller.require(READ)?;
    let Query(query) = query?;
    let (Some(system_name), Some(external_id)) = (query.system_name, query.external_id) else {
        return Err(ApiError::invalid(
            "systemName",
            "systemName and externalId are both required",
        ));
    };
    let client = state.pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM media_entries
                 WHERE project_id = $1 AND system_name = $2 AND external_id = $3"
            ),
            &[&caller.project_id, &system_name, &external_id],
        )
        .await?;
    Ok(Json(rows.iter().map(entry).collect()))
}

fn entry(row: &Row) -> MediaEntry {
    MediaEntry {
        id: row.get(0),
        version: row.get(1),
        system_name: row.get(2),
        external_id: row.get(3),
        media_type: "video".into(),
        file_name: row.get(4),
        metadata: row.get(5),
        asset: Asset {
            key: row.get(6),
            size: row.get(7),
            mime_type: row.get(8),
            sha256: row.get(9),
            original_url: row.get(10),
            duration: row.get(13),
            width: row.get(14),
            height: row.get(15),
            codec: row.get(16),
        },
        created_at: row.get(11),
        updated_at: row.get(12),
    }
}
