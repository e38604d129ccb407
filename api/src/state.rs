//! What every request handler shares: the pool, the outbox relay, settings, compiled
//! metadata schemas, the rate limiter, the API's metrics (`metrics`) and the asset storage.

use std::sync::Arc;
use video_import_shared::single_flight::SingleFlight;
use video_import_shared::store::tokens::TokenGrant;

use deadpool_postgres::Pool;
use video_import_shared::config::Settings;
use video_import_shared::outbox::Relay;
use video_import_shared::storage::Storage;

use crate::metadata::Schemas;
use crate::metrics::ApiMetrics;
use crate::quota::RateLimit;
use crate::validate::Targets;

/// Shared by every request; each handler gets a clone, and every field is a cheap handle.
#[derive(Clone)]
pub struct AppState {
    /// PostgreSQL connections; a handler holds one only for its queries.
    pub pool: Pool,
    /// Woken after a commit that wrote outbox rows, so they are published at once.
    pub relay: Relay,
    /// Read-only after start.
    pub settings: Arc<Settings>,
    /// Counters shared by all requests (atomics inside).
    pub metrics: ApiMetrics,
    /// Compiled metadata schemas per project, behind their own lock.
    pub schemas: Arc<Schemas>,
    /// Per-token request rate, when configured (a concurrent map inside).
    pub rate_limit: Option<RateLimit>,
    /// Addresses the worker and notifier may reach, checked at the door (read-only).
    pub targets: Arc<Targets>,
    /// Where the workers store videos, for reading them back.
    pub storage: Storage,
    /// Status fingerprints read once for all the polls that arrive while one is read.
    pub fingerprints: Arc<SingleFlight<(i64, String), Option<String>>>,
    /// Token lookups, likewise, by token hash.
    pub grants: Arc<SingleFlight<String, Option<TokenGrant>>>,
}
