//! A request id on every response (`x-request-id`), taken from the caller when it sends a
//! sane one, and available to error bodies while the request is handled.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use video_import_shared::telemetry::PROBE_SPAN;
use video_import_shared::trace::{self, TraceParent};

/// The response header carrying the id.
pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled ("" outside a request).
pub fn current() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// Middleware: assigns the id, runs the request with it, and sets the header.
pub async fn assign(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("req_{}", video_import_shared::ids::random_id(16)));
    let path = request.uri().path();
    let span = if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        tracing::info_span!(PROBE_SPAN, request_id = %id, method = %request.method(), path)
    } else {
        // `trace_id` and `job` are recorded by handlers that start or continue a job's trace.
        let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path, trace_id = tracing::field::Empty, job = tracing::field::Empty);
        // When spans are exported, a caller's traceparent makes this request its child.
        let caller = request
            .headers()
            .get(trace::HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        trace::adopt(&span, caller.as_ref());
        span.set_attribute("http.request.method", request.method().to_string());
        span.set_attribute("url.path", path.to_string());
        span
    };
    // Attached to the future, so every poll (on any thread) runs inside the span.
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(request))
        .instrument(span.clone())
        .await;
    let status = response.status();
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set_status(opentelemetry::trace::Status::error(status.to_string()));
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}
