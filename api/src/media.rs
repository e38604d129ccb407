//! Media-library reads: one entry by id, or entries by `systemName` and `externalId`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use video_import_shared::config::ApiSettings;
use video_import_shared::redact::{self, Show};
use video_import_shared::store::entries::{self, EntryRecord};

use crate::auth::{Caller, READ};
use crate::error::ApiError;
use crate::model::{Asset, AssetDamage, MediaEntry};
use crate::state::AppState;

/// One entry.
#[utoipa::path(
    get,
    path = "/api/v1/mediaLibrary/{id}",
    operation_id = "getMediaEntry",
    params(("id" = String, Path, description = "Media id")),
    security(("bearer" = ["public-api:read"])),
    responses(
        (status = 200, description = "The entry", body = MediaEntry),
        (status = 401, description = "No or bad token", body = crate::model::ErrorBody),
        (status = 403, description = "Token lacks public-api:read", body = crate::model::ErrorBody),
        (status = 404, description = "No such entry in this project", body = crate::model::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::model::ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<MediaEntry>, ApiError> {
    caller.require(READ)?;
    let client = state.pool.get().await?;
    let record = entries::find(&client, caller.project_id, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("No media-library entry with id {id:?}.")))?;
    Ok(Json(entry(&state.settings.api, record)))
}

/// Query string of the lookup route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
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
    operation_id = "findMediaEntries",
    params(FindQuery),
    security(("bearer" = ["public-api:read"])),
    responses(
        (status = 200, description = "Matching entries", body = Vec<MediaEntry>),
        (status = 400, description = "Missing parameter", body = crate::model::ErrorBody),
        (status = 401, description = "No or bad token", body = crate::model::ErrorBody),
        (status = 403, description = "Token lacks public-api:read", body = crate::model::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::model::ErrorBody),
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
    let records =
        entries::find_by_external_id(&client, caller.project_id, &system_name, &external_id)
            .await?;
    let api = &state.settings.api;
    Ok(Json(records.into_iter().map(|r| entry(api, r)).collect()))
}

/// Where entry `id`'s stored file is read back: under `api.public_url` when set, else a
/// path on the address the client used.
pub fn asset_url(api: &ApiSettings, id: &str) -> String {
    format!("{}/api/v1/mediaLibrary/{id}/asset", api.public_url)
}

fn entry(api: &ApiSettings, record: EntryRecord) -> MediaEntry {
    let url = asset_url(api, &record.id);
    let filename = record.file_name.clone();
    MediaEntry {
        id: record.id,
        version: record.version,
        system_name: record.system_name,
        external_id: record.external_id,
        media_type: "video".into(),
        file_name: record.file_name,
        metadata: record.metadata,
        asset: Asset {
            url,
            filename,
            key: record.asset.key,
            size: record.asset.size,
            mime_type: record.asset.mime_type,
            sha256: record.asset.sha256,
            md5: record.asset.md5,
            original_url: redact::url(&record.original_url, Show::WithoutCredentials),
            duration: record.asset.duration_seconds,
            width: record.asset.width,
            height: record.asset.height,
            codec: record.asset.codec,
            damaged: record.damage.map(|d| AssetDamage {
                kind: d.kind,
                reason: d.description,
                found_at: d.found_at,
            }),
        },
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}
