//! `GET /api/v1/mediaLibrary/{id}/asset`: streams an entry's stored video back, whole or a
//! byte range at a time (206, for players and resumable downloads), with its `ETag` (the
//! file's SHA-256) for `If-None-Match` (304) and `If-Range`. Memory stays bounded whatever
//! the file's size: the body is read from storage as the client takes it. With object
//! storage and `storage.presign_secs` set, the client is redirected to a presigned URL
//! instead, and the bucket serves the bytes.

use std::ops::RangeInclusive;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    IF_RANGE, LOCATION, RANGE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_range_header::{EndPosition, StartPosition};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use video_import_shared::store::entries;

use crate::auth::{Caller, READ};
use crate::conditional::ETag;
use crate::error::ApiError;
use crate::state::AppState;

/// What part of the file a request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// All of it (no `Range`, one that is ignored, or an `If-Range` that no longer holds).
    Whole,
    /// One byte range, inclusive (206).
    Range(RangeInclusive<u64>),
    /// A range that starts beyond the end (416).
    Unsatisfiable,
}

/// Which part of a file of `size` bytes, tagged `etag`, the `Range` and `If-Range` headers
/// ask for. A malformed `Range`, or several ranges, are ignored and the whole file is sent,
/// as RFC 9110 §14.2 allows (no multipart answers).
fn part(range: Option<&str>, if_range: Option<&str>, etag: &ETag, size: u64) -> Part {
    let Some(range) = range else {
        return Part::Whole;
    };
    if if_range.is_some_and(|tag| !etag.matches_if_range(tag)) {
        return Part::Whole;
    }
    let Ok(parsed) = http_range_header::parse_range_header(range) else {
        return Part::Whole;
    };
    // A last byte before the first makes the header invalid (ignored), not unsatisfiable.
    let reversed = parsed.ranges.iter().any(|r| {
        matches!((r.start, r.end), (StartPosition::Index(first), EndPosition::Index(last)) if last < first)
    });
    if reversed {
        return Part::Whole;
    }
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => Part::Range(ranges[0].clone()),
        Ok(_) => Part::Whole,
        Err(_) => Part::Unsatisfiable,
    }
}

/// The stored video of one entry.
#[utoipa::path(
    get,
    path = "/api/v1/mediaLibrary/{id}/asset",
    operation_id = "getMediaAsset",
    params(
        ("id" = String, Path, description = "Media id"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. bytes=0-1023 or bytes=-500; several ranges get the whole file"),
        ("If-Range" = Option<String>, Header, description = "The ETag the range belongs to: the whole file is sent if it changed"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag held: 304 while the file is unchanged"),
    ),
    security(("bearer" = ["public-api:read"])),
    responses(
        (status = 200, description = "The whole file", content_type = "video/mp4", body = Vec<u8>,
            headers(
                ("ETag" = String, description = "The file's SHA-256, quoted"),
                ("Accept-Ranges" = String, description = "bytes"),
                ("Content-Length" = u64, description = "Bytes sent"),
            )),
        (status = 206, description = "The requested byte range", content_type = "video/mp4", body = Vec<u8>,
            headers(
                ("Content-Range" = String, description = "bytes FIRST-LAST/SIZE"),
                ("ETag" = String, description = "The file's SHA-256, quoted"),
                ("Content-Length" = u64, description = "Bytes sent"),
            )),
        (status = 304, description = "Unchanged since the ETag sent in If-None-Match",
            headers(("ETag" = String, description = "The same tag"))),
        (status = 307, description = "With object storage and storage.presign_secs set: read the file (ranges too) from this presigned URL, valid that long",
            headers(
                ("Location" = String, description = "The presigned URL"),
                ("ETag" = String, description = "The file's SHA-256, quoted"),
            )),
        (status = 401, description = "No or bad token", body = crate::model::ErrorBody),
        (status = 403, description = "Token lacks public-api:read", body = crate::model::ErrorBody),
        (status = 404, description = "No such entry in this project", body = crate::model::ErrorBody),
        (status = 416, description = "The range starts beyond the end of the file", body = crate::model::ErrorBody,
            headers(("Content-Range" = String, description = "bytes */SIZE"))),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::model::ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(READ)?;
    let record = {
        let client = state.pool.get().await?;
        entries::find(&client, caller.project_id, &id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("No media-library entry with id {id:?}.")))?
    };
    let asset = record.asset;
    let etag = ETag::strong(&asset.sha256);
    if etag.is_fresh_for(&headers) {
        return Ok(etag.not_modified());
    }
    let presign = state.settings.storage.presign;
    if !presign.is_zero() {
        if let Some(signed) = state.storage.presigned_get(&asset.key, presign).await {
            let url = signed.map_err(|e| {
                anyhow::Error::new(e).context(format!("signing a URL for {}", asset.key))
            })?;
            // The storage serves the bytes (ranges included); the URL expires, so keep none.
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            let headers = response.headers_mut();
            headers.insert(
                LOCATION,
                HeaderValue::from_str(url.as_str()).map_err(|e| ApiError::Internal(e.into()))?,
            );
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
            return Ok(etag.tag(response));
        }
    }
    let size = asset.size.max(0) as u64;
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let (status, range) = match part(text(RANGE), text(IF_RANGE), &etag, size) {
        Part::Whole => (StatusCode::OK, None),
        Part::Range(range) => (StatusCode::PARTIAL_CONTENT, Some(range)),
        Part::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable(size)),
    };
    let bytes = range.clone().map(|r| *r.start()..*r.end() + 1);
    let stream = state
        .storage
        .stream(&asset.key, bytes.filter(|_| size > 0))
        .await
        .map_err(|e| {
            anyhow::Error::new(e).context(format!(
                "reading the stored file {} of entry {id}",
                asset.key
            ))
        })?;
    let length = range.as_ref().map_or(size, |r| r.end() - r.start() + 1);
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let content_type = HeaderValue::from_str(&asset.mime_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // A re-import may give the entry another file: clients keep it, but ask again.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    if let Some(range) = &range {
        let value = format!("bytes {}-{}/{size}", range.start(), range.end());
        headers.insert(
            CONTENT_RANGE,
            HeaderValue::from_str(&value).expect("digits"),
        );
    }
    let filename = utf8_percent_encode(&record.file_name, NON_ALPHANUMERIC);
    if let Ok(value) = HeaderValue::from_str(&format!("inline; filename*=UTF-8''{filename}")) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    Ok(etag.tag(response.into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> ETag {
        ETag::strong("abc")
    }

    #[test]
    fn no_range_or_a_bad_one_gets_the_whole_file() {
        assert_eq!(part(None, None, &tag(), 100), Part::Whole);
        assert_eq!(part(Some("lines=0-5"), None, &tag(), 100), Part::Whole);
        assert_eq!(part(Some("bytes=5-1"), None, &tag(), 100), Part::Whole);
        assert_eq!(
            part(Some("bytes=0-1,5-6"), None, &tag(), 100),
            Part::Whole,
            "several ranges: no multipart answers"
        );
    }

    #[test]
    fn one_range_is_served_clamped_to_the_file() {
        assert_eq!(
            part(Some("bytes=0-9"), None, &tag(), 100),
            Part::Range(0..=9)
        );
        assert_eq!(
            part(Some("bytes=90-"), None, &tag(), 100),
            Part::Range(90..=99)
        );
        assert_eq!(
            part(Some("bytes=-10"), None, &tag(), 100),
            Part::Range(90..=99)
        );
        assert_eq!(
            part(Some("bytes=50-1000"), None, &tag(), 100),
            Part::Range(50..=99)
        );
    }

    #[test]
    fn a_range_beyond_the_end_is_unsatisfiable() {
        assert_eq!(
            part(Some("bytes=100-"), None, &tag(), 100),
            Part::Unsatisfiable
        );
        assert_eq!(
            part(Some("bytes=200-300"), None, &tag(), 100),
            Part::Unsatisfiable
        );
    }

    #[test]
    fn if_range_with_another_tag_gets_the_whole_file() {
        assert_eq!(
            part(Some("bytes=0-9"), Some("\"abc\""), &tag(), 100),
            Part::Range(0..=9)
        );
        assert_eq!(
            part(Some("bytes=0-9"), Some("\"old\""), &tag(), 100),
            Part::Whole
        );
    }
}
