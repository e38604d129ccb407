//! API errors in the Livingdocs shape `{"status", "error", "error_details"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

/// Everything a handler can answer instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, unknown or expired token; the message is shown under `access_token`.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// The token lacks the scope the route needs.
    #[error("forbidden: needs scope {0}")]
    Forbidden(&'static str),
    /// Nothing with that id in the caller's project.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request conflicts with the resource's state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Bad input: one message per offending field path.
    #[error("invalid request")]
    Invalid(Vec<(String, String)>),
    /// The body is larger than `api.max_body_bytes`.
    #[error("payload too large")]
    TooLarge(usize),
    /// A dependency (database) failed; logged, and the caller is told to retry.
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

impl ApiError {
    /// A single-field validation error.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid(vec![(field.into(), message.into())])
    }
}

/// Body of an error response.
pub fn body(status: StatusCode, details: Value) -> Json<Value> {
    Json(json!({
        "status": status.as_u16(),
        "error": status.canonical_reason().unwrap_or("Error"),
        "error_details": details,
    }))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, details) = match self {
            ApiError::Unauthorized(message) => {
                (StatusCode::UNAUTHORIZED, json!({ "access_token": message }))
            }
            ApiError::Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                json!({ "access_token": format!("The request requires higher privileges (scope {scope}).") }),
            ),
            ApiError::NotFound(what) => (StatusCode::NOT_FOUND, json!({ "message": what })),
            ApiError::Conflict(what) => (StatusCode::CONFLICT, json!({ "message": what })),
            ApiError::Invalid(fields) => {
                let mut map = Map::new();
                for (field, message) in fields {
                    map.entry(field).or_insert(Value::String(message));
                }
                (StatusCode::BAD_REQUEST, Value::Object(map))
            }
            ApiError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "message": format!("The request body is larger than {limit} bytes; split the batch.") }),
            ),
            ApiError::Internal(error) => {
                tracing::error!(error = %format!("{error:#}"), "request failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "message": "The service could not complete the request (database unavailable). Nothing was stored; retry in a few seconds." }),
                )
            }
        };
        (status, body(status, details)).into_response()
    }
}
