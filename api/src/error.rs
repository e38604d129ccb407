//! API errors in the Livingdocs shape `{"status", "error", "error_details"}`, plus the
//! request id.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::model::{ErrorBody, JobSummary, PrunedDetails, PrunedError};
use crate::request_id;

/// One metadata problem of a batch.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataProblem {
    /// The metadata property concerned ("" for the metadata object itself).
    pub metadata_property: String,
    pub message: String,
    /// Position of the video in the batch.
    pub index: usize,
    pub external_id: String,
}

/// What was asked of a job that retention pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrunedAsk {
    /// Its status.
    Status,
    /// A retry of its failed videos.
    Retry,
    /// Its webhook again.
    Webhook,
}

/// Everything a handler can answer instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, unknown, revoked or expired token; the message is shown under `access_token`.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// The token lacks the scope the route needs.
    #[error("forbidden: needs scope {0}")]
    Forbidden(&'static str),
    /// Nothing with that id in the caller's project.
    #[error("not found: {0}")]
    NotFound(String),
    /// No route has this path (Livingdocs names the URL).
    #[error("no route {0}")]
    UnknownRoute(String),
    /// A dated API version that Livingdocs retired.
    #[error("API version {0} is gone")]
    VersionGone(String),
    /// The route exists, not with this method (the `Allow` header lists the ones it takes).
    #[error("method {0} not allowed")]
    MethodNotAllowed(String),
    /// The job was pruned after the retention period (410, with what is left of it).
    #[error("job pruned")]
    Pruned {
        job: Box<JobSummary>,
        asked: PrunedAsk,
    },
    /// The request conflicts with the resource's state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request is well formed but there is nothing to do with it (a retry of a job
    /// without failed videos).
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    /// A `Range` that starts beyond the end of a file of this many bytes.
    #[error("range not satisfiable")]
    RangeNotSatisfiable(u64),
    /// Bad input: one message per offending field path.
    #[error("invalid request")]
    Invalid(Vec<(String, String)>),
    /// Metadata that fails the project's schema, every problem of the batch.
    #[error("metadata validation failed")]
    Metadata(Vec<MetadataProblem>),
    /// The Idempotency-Key was used with another body.
    #[error("idempotency key reused with a different body")]
    IdempotencyMismatch,
    /// The project's daily video limit; `retry_after` is when enough quota frees up.
    #[error("usage limit: {message}")]
    UsageLimit {
        message: String,
        retry_after: Option<u64>,
    },
    /// The token sent requests faster than `api.rate_limit_per_second`.
    #[error("rate limited")]
    RateLimited { retry_after: u64 },
    /// The body is larger than `api.max_body_bytes`.
    #[error("payload too large")]
    TooLarge(usize),
    /// The body did not arrive within `api.body_timeout_secs`.
    #[error("request body timed out")]
    BodyTimeout(std::time::Duration),
    /// The body was declared as something other than JSON (the Content-Type sent).
    #[error("unsupported media type {0}")]
    UnsupportedMediaType(String),
    /// The JSON body was declared in a charset other than UTF-8 (the charset sent).
    #[error("unsupported charset {0}")]
    UnsupportedCharset(String),
    /// Something failed on our side; logged with the request id. A database that cannot be
    /// reached answers 503 (retry), anything else 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::invalid("query", rejection.body_text())
    }
}

impl ApiError {
    /// A single-field validation error.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid(vec![(field.into(), message.into())])
    }
}

fn body(status: StatusCode, error: &str, details: Value) -> ErrorBody {
    ErrorBody {
        status: status.as_u16(),
        error: error.to_string(),
        error_details: details,
        request_id: request_id::current(),
    }
}

fn standard(status: StatusCode, details: Value) -> ErrorBody {
    body(
        status,
        status.canonical_reason().unwrap_or("Error"),
        details,
    )
}

fn with_retry_after(mut response: Response, secs: Option<u64>) -> Response {
    if let Some(secs) = secs {
        if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Unauthorized(message) => (
                StatusCode::UNAUTHORIZED,
                standard(StatusCode::UNAUTHORIZED, json!({ "access_token": message })),
            ),
            ApiError::Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                standard(
                    StatusCode::FORBIDDEN,
                    json!({ "access_token": format!("The request requires higher privileges (scope {scope}).") }),
                ),
            ),
            ApiError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                standard(StatusCode::NOT_FOUND, json!({ "message": what })),
            ),
            ApiError::UnknownRoute(path) => (
                StatusCode::NOT_FOUND,
                standard(StatusCode::NOT_FOUND, json!({ "url": path })),
            ),
            ApiError::VersionGone(version) => (
                StatusCode::GONE,
                standard(
                    StatusCode::GONE,
                    json!({ "message": format!("API version {version} is no longer available; use /api/v1/… or a dated version from 2025-03 on.") }),
                ),
            ),
            ApiError::MethodNotAllowed(method) => (
                StatusCode::METHOD_NOT_ALLOWED,
                standard(
                    StatusCode::METHOD_NOT_ALLOWED,
                    json!({ "message": format!("This route does not take {method}; the Allow header lists the methods it takes.") }),
                ),
            ),
            ApiError::Pruned { job, asked } => {
                let status = StatusCode::GONE;
                let body = PrunedError {
                    status: status.as_u16(),
                    error: "Gone".into(),
                    error_details: PrunedDetails {
                        message: pruned_message(&job, asked),
                        job: *job,
                    },
                    request_id: request_id::current(),
                };
                return (status, Json(body)).into_response();
            }
            ApiError::Conflict(what) => (
                StatusCode::CONFLICT,
                standard(StatusCode::CONFLICT, json!({ "message": what })),
            ),
            ApiError::Unprocessable(what) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                standard(StatusCode::UNPROCESSABLE_ENTITY, json!({ "message": what })),
            ),
            ApiError::RangeNotSatisfiable(size) => {
                let status = StatusCode::RANGE_NOT_SATISFIABLE;
                let error = standard(
                    status,
                    json!({ "Range": format!("starts beyond the end of the file ({size} bytes); ask for bytes=0-{}", size.saturating_sub(1)) }),
                );
                let mut response = (status, Json(error)).into_response();
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return response;
            }
            ApiError::Invalid(fields) => {
                let mut map = Map::new();
                for (field, message) in fields {
                    map.entry(field).or_insert(Value::String(message));
                }
                (
                    StatusCode::BAD_REQUEST,
                    standard(StatusCode::BAD_REQUEST, Value::Object(map)),
                )
            }
            ApiError::Metadata(problems) => (
                StatusCode::BAD_REQUEST,
                body(
                    StatusCode::BAD_REQUEST,
                    "ValidationError",
                    json!({ "message": "Metadata validation failed.", "errors": problems }),
                ),
            ),
            ApiError::IdempotencyMismatch => (
                StatusCode::UNPROCESSABLE_ENTITY,
                standard(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({ "Idempotency-Key": "This key was used in the last 24 hours with a different body; send a new key for a new batch." }),
                ),
            ),
            ApiError::UsageLimit {
                message,
                retry_after,
            } => {
                // The seed documents this one error as an array.
                let status = StatusCode::TOO_MANY_REQUESTS;
                let array = vec![body(
                    status,
                    "Usage Limit Exceeded",
                    json!({ "message": message }),
                )];
                return with_retry_after((status, Json(array)).into_response(), retry_after);
            }
            ApiError::RateLimited { retry_after } => {
                let status = StatusCode::TOO_MANY_REQUESTS;
                let error = standard(
                    status,
                    json!({ "message": format!("Too many requests with this token; retry in {retry_after} s.") }),
                );
                return with_retry_after((status, Json(error)).into_response(), Some(retry_after));
            }
            ApiError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                standard(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    json!({ "message": format!("The request body is larger than {limit} bytes; split the batch.") }),
                ),
            ),
            ApiError::BodyTimeout(limit) => (
                StatusCode::REQUEST_TIMEOUT,
                standard(
                    StatusCode::REQUEST_TIMEOUT,
                    json!({ "message": format!("The request body did not arrive within {} s; send it again.", limit.as_secs()) }),
                ),
            ),
            ApiError::UnsupportedMediaType(sent) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                standard(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    json!({ "message": format!("The body was sent as {sent:?}; send JSON with 'Content-Type: application/json'.") }),
                ),
            ),
            ApiError::UnsupportedCharset(charset) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                standard(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    json!({ "message": format!("The Content-Type names charset {charset:?}; only UTF-8 is read. Send the body as UTF-8, with 'Content-Type: application/json' or 'application/json; charset=utf-8'.") }),
                ),
            ),
            ApiError::Internal(error) if database_unreachable(&error) => {
                tracing::error!(error = %format!("{error:#}"), "request failed: the database is unreachable");
                let status = StatusCode::SERVICE_UNAVAILABLE;
                let body = standard(
                    status,
                    json!({ "message": "The database is unreachable. Nothing was stored; retry in a few seconds." }),
                );
                return with_retry_after((status, Json(body)).into_response(), Some(5));
            }
            ApiError::Internal(error) if data_exception(&error).is_some() => {
                let why = data_exception(&error).unwrap_or_default();
                tracing::warn!(%why, "a value in the request cannot be stored");
                (
                    StatusCode::BAD_REQUEST,
                    standard(
                        StatusCode::BAD_REQUEST,
                        json!({ "request": format!("holds a value the database cannot store or compare ({why}); remove it and send the request again") }),
                    ),
                )
            }
            ApiError::Internal(error) => {
                tracing::error!(error = %format!("{error:#}"), "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    standard(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({ "message": "The request failed on our side and was logged with its request id; nothing was stored. Quote the request id when you report it." }),
                    ),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

/// What a 410 for a pruned job says, by what was asked.
fn pruned_message(job: &JobSummary, asked: PrunedAsk) -> String {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(
            || "an unknown time".to_string(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
    };
    let (id, finished) = (&job.id, time(job.finished_at));
    let when = match job.pruned_at {
        Some(t) => format!("were removed at {}", time(Some(t))),
        None => "are being removed".to_string(),
    };
    let removed = format!(
        "Job {id} finished at {finished}; its videos' details and webhook history {when}, after the retention period (retention.finished_jobs_secs)."
    );
    match asked {
        PrunedAsk::Status => format!(
            "{removed} Its overview is below and in the job list; its imported videos stay in the media library."
        ),
        PrunedAsk::Retry => format!(
            "{removed} Nothing is left to retry: import its failed videos again as a new batch."
        ),
        PrunedAsk::Webhook => format!("{removed} Its webhook cannot be sent again."),
    }
}

/// Whether `error` comes from a database that cannot be reached (no connection from the
/// pool, a closed connection, or a server refusing connections), rather than from a query.
fn database_unreachable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if cause.is::<deadpool_postgres::PoolError>() {
            return true;
        }
        match cause.downcast_ref::<tokio_postgres::Error>() {
            Some(e) if e.is_closed() => true,
            // Class 08: connection exception; 57P0x: the server is shutting down or starting.
            Some(e) => {
                e.code()
                    .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
                    || e.code().is_none()
                        && std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
            }
            None => false,
        }
    })
}

/// PostgreSQL's message when `error` is a data exception (SQLSTATE class 22: a value it
/// cannot store or compare, such as NUL in text): the caller's input, not our failure.
fn data_exception(error: &anyhow::Error) -> Option<String> {
    error.chain().find_map(|cause| {
        let db = cause
            .downcast_ref::<tokio_postgres::Error>()?
            .as_db_error()?;
        db.code()
            .code()
            .starts_with("22")
            .then(|| db.message().to_string())
    })
}
