//! The API's wiring: routes, the metrics middleware, and the state and loops it serves with.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Extensions, HeaderMap, Method, StatusCode, Uri, Version};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tower_http::compression::predicate::{Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use video_import_shared::config::Settings;
use video_import_shared::metrics;
use video_import_shared::ops::{self, Ops};
use video_import_shared::outbox::Relay;
use video_import_shared::process;
use video_import_shared::service::Service;
use video_import_shared::storage::Storage;

use crate::backlog::BacklogMetrics;
use crate::error::ApiError;
use crate::metadata::Schemas;
use crate::metrics::ApiMetrics;
use crate::quota::RateLimit;
use crate::server;
use crate::state::AppState;
use crate::validate::Targets;
use video_import_shared::netguard::AddressPolicy;

async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // The exported request span's route (its path may hold ids).
    tracing::Span::current().set_attribute("http.route", route.clone());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .observe(&route, response.status(), started.elapsed());
    response
}

async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::UnknownRoute(uri.path().to_string())
}

async fn wrong_method(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

/// gzip for JSON answers of some size when the client accepts it (status pages of large
/// jobs shrink about tenfold); never for videos, which are compressed already and served
/// in byte ranges.
fn compression() -> CompressionLayer<impl Predicate> {
    let json = |_: StatusCode, _: Version, headers: &HeaderMap, _: &Extensions| {
        headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
    };
    CompressionLayer::new().compress_when(SizeAbove::new(1024).and(json))
}

/// All routes.
pub fn router(state: AppState, ops: Ops) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/import/videos",
            post(crate::import::create).get(crate::status::list),
        )
        .route("/api/v1/openapi.json", get(crate::openapi::document))
        .route("/api/v1/import/videos/status", get(crate::status::show))
        .route(
            "/api/v1/import/videos/{id}/webhook",
            post(crate::redeliver::create),
        )
        .route(
            "/api/v1/import/videos/{id}/cancel",
            post(crate::cancel::create),
        )
        .route("/api/v1/mediaLibrary", get(crate::media::find))
        .route("/api/v1/mediaLibrary/{id}", get(crate::media::show))
        .route("/api/v1/mediaLibrary/{id}/asset", get(crate::asset::show))
        .route(
            "/api/v1/import/videos/{id}/retry",
            post(crate::retry::create),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
        .layer(compression());
    api.merge(ops::router(ops))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn(crate::validate::refuse_nul_in_uri))
        .layer(middleware::from_fn(crate::versions::refuse_retired))
        .layer(middleware::from_fn(crate::request_id::assign))
}

/// Connects to everything, starts the outbox relay and the backlog gauges, and serves on
/// `api.listen` until SIGTERM.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let service = Service::start(&settings, "api").await?;
    let storage = Storage::open(&settings.storage).await?;
    let listener = process::bind("api.listen", settings.api.listen).await?;
    if let Err(e) = service.publisher.ensure_connected().await {
        // Not fatal: accepted jobs wait in the outbox until the broker is back.
        tracing::warn!(error = %format!("{e:#}"), "RabbitMQ is unreachable; accepting imports into the outbox");
    }
    let shutdown = service.shutdown.clone();
    let relay = Relay::new(
        service.pool.clone(),
        service.publisher.clone(),
        &service.registry,
    );
    let relay_task = tokio::spawn(relay.clone().run(shutdown.clone()));
    tokio::spawn(
        BacklogMetrics::new(&service.registry).run(service.pool.clone(), shutdown.clone()),
    );
    let targets = Arc::new(Targets {
        videos: AddressPolicy::new(
            settings.fetch.allow_private_networks,
            &settings.fetch.allowed_networks,
        ),
        webhook: AddressPolicy::new(
            settings.webhook.allow_private_networks,
            &settings.webhook.allowed_networks,
        ),
        refusals: Some(metrics::ssrf_refusals(&service.registry, "api")),
    });
    let limits = server::Limits {
        header_timeout: settings.api.header_timeout,
        max_connections: settings.api.max_connections,
        max_connections_per_client: settings.api.max_connections_per_client,
    };
    let state = AppState {
        pool: service.pool.clone(),
        relay,
        rate_limit: RateLimit::new(
            settings.api.rate_limit_per_second,
            settings.api.rate_limit_burst,
        ),
        settings: Arc::new(settings),
        metrics: ApiMetrics::new(&service.registry)?,
        schemas: Arc::new(Schemas::default()),
        targets,
        storage,
        fingerprints: Arc::default(),
        grants: Arc::default(),
    };
    let ops = Ops {
        pool: service.pool.clone(),
        publisher: service.publisher.clone(),
        registry: service.registry.clone(),
    };
    tracing::info!(address = %listener.local_addr()?, "video-import-api listening");
    server::serve(listener, router(state, ops), limits, shutdown.clone()).await;
    shutdown.cancel();
    let _ = relay_task.await;
    Ok(())
}
