//! Media-library reads: one entry by id, or entries by `systemName` and `externalId`.

use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_postgres::Row;

use crate::app::AppState;
use crate::auth::{Caller, READ};
use crate::error::ApiError;

const COLUMNS: &str = "id, version, system_name, external_id, file_name, metadata, asset_key,
    asset_size, mime_type, sha256, original_url, created_at, updated_at, duration_seconds, width,
    height, video_codec";

/// `GET /api/v1/mediaLibrary/{id}`.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FindQuery {
    system_name: Option<String>,
    external_id: Option<String>,
}

/// `GET /api/v1/mediaLibrary?systemName=&externalId=`: an array of the matching entries.
pub async fn find(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<FindQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(READ)?;
    let (Some(system_name), Some(external_id)) = (query.system_name, query.external_id) else {
        return Err(ApiError::Invalid(vec![(
            "systemName".into(),
            "systemName and externalId are both required".into(),
        )]));
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
    Ok(Json(Value::Array(rows.iter().map(entry).collect())))
}

fn entry(row: &Row) -> Value {
    json!({
        "id": row.get::<_, String>(0),
        "version": row.get::<_, i32>(1),
        "systemName": row.get::<_, String>(2),
        "externalId": row.get::<_, String>(3),
        "mediaType": "video",
        "fileName": row.get::<_, String>(4),
        "metadata": row.get::<_, Value>(5),
        "asset": {
            "key": row.get::<_, String>(6),
            "size": row.get::<_, i64>(7),
            "mimeType": row.get::<_, String>(8),
            "sha256": row.get::<_, String>(9),
            "originalUrl": row.get::<_, String>(10),
            "duration": row.get::<_, Option<f64>>(13),
            "width": row.get::<_, Option<i32>>(14),
            "height": row.get::<_, Option<i32>>(15),
            "codec": row.get::<_, Option<String>>(16),
        },
        "createdAt": row.get::<_, DateTime<Utc>>(11),
        "updatedAt": row.get::<_, DateTime<Utc>>(12),
    })
}
