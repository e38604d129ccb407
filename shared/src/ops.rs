//! Operational endpoints every binary serves: `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use deadpool_postgres::Pool;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

use crate::queue::Publisher;

/// What readiness depends on: PostgreSQL and RabbitMQ answering.
#[derive(Clone)]
pub struct Ops {
    pub pool: Pool,
    pub publisher: Arc<Publisher>,
    pub registry: Registry,
}

/// Routes for `/healthz`, `/readyz` and `/metrics`.
pub fn router(ops: Ops) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    // An unreachable host can hang a connect; readiness must answer promptly.
    let limit = std::time::Duration::from_secs(3);
    let database = tokio::time::timeout(limit, crate::db::ping(&ops.pool))
        .await
        .unwrap_or(false);
    let broker = tokio::time::timeout(limit, ops.publisher.ensure_connected())
        .await
        .is_ok_and(|r| r.is_ok());
    let body = serde_json::json!({
        "database": if database { "ok" } else { "unreachable" },
        "rabbitmq": if broker { "ok" } else { "unreachable" },
    });
    let status = if database && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    let mut buffer = Vec::new();
    let encoder = TextEncoder::new();
    // Ours (prefixed video_import_), then the process collector's process_* families.
    let mut families = ops.registry.gather();
    families.extend(prometheus::default_registry().gather());
    if let Err(e) = encoder.encode(&families, &mut buffer) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_string())],
        buffer,
    )
        .into_response()
}

/// Serves the operational endpoints on `listener` until `shutdown` (worker and notifier).
pub async fn serve(
    listener: tokio::net::TcpListener,
    ops: Ops,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, router(ops))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
