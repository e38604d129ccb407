//! `POST /api/v1/import/videos`: validate the batch and its metadata, then, in one
//! transaction, honour the Idempotency-Key, enforce the daily limit and store the job (its
//! items, registered for dispatch, see `store::jobs::insert`).

use anyhow::Context;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use axum::Json;
use bytes::BytesMut;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use video_import_shared::config::ApiSettings;
use video_import_shared::ids;
use video_import_shared::store::{idempotency, jobs, projects};
use video_import_shared::trace::{self, TraceParent};

use crate::auth::{Caller, WRITE};
use crate::error::ApiError;
use crate::model::{Accepted, ErrorBody, ImportRequest};
use crate::quota;
use crate::state::AppState;
use crate::validate::{self, Video};

/// Header that makes a retried POST return the first job instead of creating another.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Accepts a batch and answers `{"id": job id}` once it is durable.
#[utoipa::path(
    post,
    path = "/api/v1/import/videos",
    operation_id = "createImport",
    request_body = ImportRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Same key and body within 24 hours returns the first job (max 255 characters)")),
    security(("bearer" = ["public-api:write"])),
    responses(
        (status = 200, description = "Accepted; the job is durable", body = Accepted),
        (status = 400, description = "Invalid batch or metadata; every offending field is named", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Token lacks public-api:write", body = ErrorBody),
        (status = 413, description = "Body larger than api.max_body_bytes", body = ErrorBody),
        (status = 408, description = "The body did not arrive within api.body_timeout_secs", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json, or names a charset other than utf-8", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused with another body", body = ErrorBody),
        (status = 429, description = "Daily limit (an array, as Livingdocs) or rate limit (an object); see Retry-After", body = crate::model::TooManyRequests),
        (status = 503, description = "Database unavailable; nothing stored", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Accepted>, ApiError> {
    caller.require(WRITE)?;
    check_content_type(&headers)?;
    let body = read_body(body, &state.settings.api).await?;
    let idempotency_key = idempotency_key(&headers)?;
    let batch = validate::batch(&body, state.settings.api.max_batch_size, &state.targets)?;

    let client = state.pool.get().await?;
    let limits = projects::limits(&client, caller.project_id).await?;
    crate::sources::check(&client, caller.project_id, &batch.videos).await?;
    drop(client);
    state.schemas.check(
        caller.project_id,
        limits.metadata_schema.as_ref(),
        &batch.videos,
    )?;
    let job = Submission {
        system_name: &batch.system_name,
        webhook: batch.webhook.as_deref(),
        context: batch.context.as_deref(),
        videos: &batch.videos,
        retry_of: None,
    };
    let key = idempotency_key.map(|key| (key, hex::encode(Sha256::digest(&body))));
    let accepted = accept(&state, &caller, &headers, key, limits.daily_limit, job).await?;
    Ok(Json(accepted))
}

/// The `Idempotency-Key` header, checked.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_string()))
}

/// A new job, however it came: a batch, or a retry of a job's failed videos.
pub struct Submission<'a> {
    pub system_name: &'a str,
    pub webhook: Option<&'a str>,
    /// The caller's context, byte for byte.
    pub context: Option<&'a str>,
    pub videos: &'a [Video],
    pub retry_of: Option<&'a str>,
}

/// Stores `job` in one transaction: honours the Idempotency-Key (`key`: the key and a hash
/// of what was asked, which tells a replay from a reuse), enforces the daily limit and
/// inserts the job (its items registered for dispatch, see `store::jobs::insert`).
pub async fn accept(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    key: Option<(String, String)>,
    daily_limit: Option<i32>,
    job: Submission<'_>,
) -> Result<Accepted, ApiError> {
    let job_id = ids::random_id(12);
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await.context("starting the import")?;
    if let Some((key, hash)) = &key {
        match idempotency::claim(&tx, caller.project_id, key, hash, &job_id).await? {
            idempotency::KeyClaim::Claimed => {}
            // The transaction ends unused: the first request's job stands.
            idempotency::KeyClaim::Replay(first) => return Ok(Accepted { id: first }),
            idempotency::KeyClaim::Mismatch => return Err(ApiError::IdempotencyMismatch),
        }
    }
    let total = job.videos.len() as i32;
    // Without a configured limit no counting query runs.
    if let Some(limit) = daily_limit {
        quota::check_daily_limit(&tx, caller.project_id, limit, total).await?;
    }
    // The job's trace: this request's span when spans are exported (a child of the caller's
    // traceparent, see `request_id`); otherwise a child of the caller's trace, or a new one.
    let trace = trace::current().unwrap_or_else(|| {
        headers
            .get(trace::HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse)
            .unwrap_or_else(TraceParent::root)
            .child()
    });
    let span = tracing::Span::current();
    span.record("trace_id", trace.trace_id.as_str());
    span.record("job", job_id.as_str());
    let new = jobs::NewJob {
        id: &job_id,
        trace: Some(&trace),
        project_id: caller.project_id,
        system_name: job.system_name,
        webhook: job.webhook,
        context: job.context,
        retry_of: job.retry_of,
        videos: job.videos,
    };
    jobs::insert(&tx, &new).await?;
    tx.commit().await.context("committing the import")?;

    state.relay.wake();
    state.metrics.jobs_accepted.inc();
    state.metrics.videos_accepted.inc_by(total as u64);
    tracing::info!(job = %job_id, videos = total, retry_of = job.retry_of, "import job accepted");
    Ok(Accepted { id: job_id })
}

/// A body declared as anything but JSON (`application/json` or `…+json`), or in a charset
/// other than UTF-8, is refused with 415; a body without a Content-Type is read as JSON.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(value.as_bytes()).to_string();
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    if essence != "application/json" && !essence.ends_with("+json") {
        return Err(ApiError::UnsupportedMediaType(text));
    }
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        if name.trim().eq_ignore_ascii_case("charset") {
            let charset = value.trim().trim_matches('"');
            if !charset.eq_ignore_ascii_case("utf-8") {
                return Err(ApiError::UnsupportedCharset(charset.to_string()));
            }
        }
    }
    Ok(())
}

/// How much of an oversized body is read and discarded before the 413 is sent, so that a
/// client still sending receives the answer rather than a reset connection.
const DRAIN_BYTES: usize = 1024 * 1024;

/// Reads the whole body, at most `api.max_body_bytes` (413 beyond) within
/// `api.body_timeout_secs` (408 after), so a client that stops sending cannot hold a request.
async fn read_body(body: Body, settings: &ApiSettings) -> Result<Bytes, ApiError> {
    let limit = settings.max_body_bytes;
    let read = async move {
        let mut body = body;
        let mut kept = BytesMut::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::invalid("body", format!("could not be read: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total += data.len();
            if total <= limit {
                kept.extend_from_slice(&data);
            } else if total > limit + DRAIN_BYTES {
                return Err(ApiError::TooLarge(limit));
            }
        }
        if total > limit {
            Err(ApiError::TooLarge(limit))
        } else {
            Ok(kept.freeze())
        }
    };
    tokio::time::timeout(settings.body_timeout, read)
        .await
        .unwrap_or(Err(ApiError::BodyTimeout(settings.body_timeout)))
}
